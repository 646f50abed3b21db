"""The first `fit` on TensorFlow traces SAM's step once.

A `tf.function` whose first trace creates variables is traced a second
time without creating them. Keras' TensorFlow trainer (without a
distribution strategy) creates the optimizer's slots and the compiled
metrics inside that first trace, so its step is traced twice; SAMModel
builds them beforehand, from the batch's shapes, and its larger step is
traced once (`tools/first_call.py` measures what that saves)."""

import keras
import numpy as np
import pytest

import keras_sam

TRACES = {"train_step": 0}


def counting(base):
    """`base` with a `train_step` that counts its calls (its traces)."""

    class Counting(base):
        def train_step(self, data):
            TRACES["train_step"] += 1
            return super().train_step(data)

    return Counting


class Subclassed(counting(keras_sam.SAMModel)):
    """Built by its first batch: no `keras.Input`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.head = keras.layers.Dense(3)

    def call(self, inputs):
        return self.head(self.hidden(inputs))


def build(kind):
    if kind == "subclass":
        model = Subclassed(rho=0.1)
    else:
        inputs = keras.Input((5,))
        h = keras.layers.Dense(8, activation="relu")(inputs)
        outputs = keras.layers.Dense(3)(h)
        if kind == "functional":
            model = counting(keras_sam.SAMModel)(inputs, outputs, rho=0.1)
        else:  # the same model under Keras' own step
            model = counting(keras.Model)(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 5)).astype("float32"), np.arange(16) % 3


def fit_traces(model):
    TRACES["train_step"] = 0
    model.fit(*data(), batch_size=8, epochs=2, verbose=0)
    return TRACES["train_step"]


@pytest.mark.parametrize("kind", ["functional", "subclass"])
def test_the_first_fit_traces_the_step_once(kind):
    model = build(kind)
    assert fit_traces(model) == 1
    assert fit_traces(model) == 0  # traced, not retraced


def test_keras_model_traces_its_step_twice():
    # What the test above guards against, under Keras' own step (if Keras
    # starts building first, this fails, and SAMModel's build can go).
    assert fit_traces(build("keras")) == 2


@pytest.mark.parametrize("kind", ["functional", "subclass"])
def test_evaluate_or_predict_first_then_fit_traces_once(kind):
    x, y = data()
    for first in ("evaluate", "predict"):
        model = build(kind)
        if first == "evaluate":
            model.evaluate(x, y, verbose=0)
        else:
            model.predict(x, verbose=0)
        assert fit_traces(model) == 1
