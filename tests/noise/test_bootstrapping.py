"""Tests of keras_sam.noise.bootstrapping: retraining on predictions."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.noise.bootstrapping import bootstrap
from keras_sam.noise.bootstrapping import reinitialize
from keras_sam.noise.bootstrapping import relabel

FIT = {"batch_size": 8, "epochs": 3, "shuffle": False, "verbose": 0}


def build(sam):
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(inputs)
    if sam:
        model = keras_sam.SAMModel(inputs, outputs, rho=0.2)
    else:
        model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class InitialWeights(keras.callbacks.Callback):
    """Records the model and its trainable weights when each fit begins."""

    def __init__(self):
        super().__init__()
        self.starts = []

    def on_train_begin(self, logs=None):
        weights = [v.numpy().copy() for v in self.model.trainable_variables]
        self.starts.append((self.model, weights))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.integers(0, 3, size=32).astype("int32")  # random labels
    return x, y


@pytest.mark.parametrize("sam", [True, False])
@pytest.mark.parametrize("how", ["model", "build_fn"])
def test_bootstrap_retrains_fresh_model_on_predictions(data, sam, how):
    x, y = data
    recorder = InitialWeights()
    source = build(sam) if how == "model" else (lambda: build(sam))
    result = bootstrap(
        source, x, y, callbacks=[recorder], **FIT
    )
    first, second = result.first, result.second
    assert second is not first and type(second) is type(first)
    if sam:
        assert float(second.rho.numpy()) == pytest.approx(0.2)
    (model_1, init_1), (model_2, init_2) = recorder.starts
    assert model_1 is first and model_2 is second
    final_1 = [v.numpy() for v in first.trainable_variables]
    # The second model starts from new weights, not the first's (initial or
    # trained).
    assert np.abs(init_2[0] - init_1[0]).max() > 1e-3
    assert np.abs(init_2[0] - final_1[0]).max() > 1e-3

    # The labels are the first model's argmax predictions (numpy forward).
    kernel, bias = final_1
    expected = (x @ kernel + bias).argmax(axis=1)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.labels.dtype == y.dtype
    assert np.any(result.labels != y)  # relabelling changed something

    # Replaying the second training from its initial weights on the
    # predicted labels reproduces it; on the original labels it does not.
    def replay(labels):
        model = build(sam)
        for variable, value in zip(model.trainable_variables, init_2):
            variable.assign(value)
        model.fit(x, labels, **FIT)
        return model.trainable_variables[0].numpy()

    final_2 = second.trainable_variables[0].numpy()
    np.testing.assert_allclose(replay(result.labels), final_2, atol=1e-6)
    assert np.abs(replay(y) - final_2).max() > 1e-3
    assert len(result.second_history.history["loss"]) == FIT["epochs"]
    assert len(result.first_history.history["loss"]) == FIT["epochs"]


def test_relabel_keeps_one_hot_format(data):
    x, y = data
    model = build(sam=False)
    one_hot = np.eye(3, dtype="float32")[y]
    labels = relabel(model, x, like=one_hot)
    assert labels.shape == (32, 3) and labels.dtype == np.float32
    np.testing.assert_array_equal(labels.sum(axis=1), 1)
    np.testing.assert_array_equal(
        labels.argmax(1), np.asarray(model.predict(x, verbose=0)).argmax(1)
    )


def test_retrain_kwargs_override(data):
    x, y = data
    result = bootstrap(
        build(True), x, y, retrain_kwargs={"epochs": 1}, **FIT
    )
    assert len(result.first_history.history["loss"]) == 3
    assert len(result.second_history.history["loss"]) == 1


def test_build_fn_returning_the_same_model_is_rejected(data):
    x, y = data
    model = build(True)
    with pytest.raises(ValueError, match="shares weights"):
        bootstrap(lambda: model, x, y, **FIT)


def test_uncompiled_model_is_rejected(data):
    x, y = data
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="not compiled"):
        reinitialize(model)
