"""Drop-in fidelity: every Keras pattern on `keras.Model` and on `SAMModel`.

Each pattern of `PATTERNS` is a user program (build, train, data) run as
twins (see `tests/twins.py`): with rho = 0 the SAM twin must give what
Keras gives; with rho > 0 only its trained weights may differ. Adding a
pattern is one `Pattern(...)` entry; patterns that need files, a strategy or
global state have their own tests below.
"""

import csv
import dataclasses
import functools
import os
import warnings
from typing import Any, Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from keras import ops

import keras_sam
from tests.helpers import mirrored
from tests.twins import PLAIN
from tests.twins import SAM_ONLY_KEYS
from tests.twins import Flavour
from tests.twins import assert_nested_close
from tests.twins import assert_weights_equal
from tests.twins import classification_data
from tests.twins import fit_with
from tests.twins import mlp
from tests.twins import run_twins
from tests.twins import strip_sam_logs

X, Y = classification_data()
DATA = (X, Y)
SAMPLE_WEIGHT = np.linspace(0.2, 2.0, len(X)).astype("float32")
RHO = 0.05


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class Batches(keras.utils.PyDataset):
    """`X, Y` in batches of 16, as a `keras.utils.PyDataset`."""

    def __len__(self):
        return -(-len(X) // 16)

    def __getitem__(self, index):
        window = slice(16 * index, 16 * (index + 1))
        return X[window], Y[window]


# ---------------------------------------------------------------- layers


class CustomDropout(layers.Layer):
    """The keras.io subclassing guide's dropout (a `SeedGenerator`)."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs, training=None):
        if training:
            return keras.random.dropout(
                inputs, rate=self.rate, seed=self.seed_generator
            )
        return inputs


class UnseededDropout(layers.Layer):
    """Dropout drawing from Keras' global seed generator (`seed=None`)."""

    def call(self, inputs, training=None):
        if training:
            return keras.random.dropout(inputs, rate=0.5)
        return inputs


class Noise(layers.Layer):
    """Adds unseeded Gaussian noise in training; keeps its last draw."""

    def build(self, input_shape):
        self.last_draw = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="last_draw"
        )

    def call(self, inputs, training=None):
        if not training:
            return inputs
        noise = keras.random.normal(ops.shape(inputs), stddev=0.1)
        self.last_draw.assign(ops.cast(noise[0, 0], self.last_draw.dtype))
        return inputs + ops.cast(noise, inputs.dtype)


class Sampling(layers.Layer):
    """The VAE's z = mean + sigma * eps (unseeded), adding the KL loss."""

    def call(self, inputs):
        z_mean, z_log_var = inputs
        kl = -0.5 * ops.mean(
            1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)
        )
        self.add_loss(kl)
        eps = keras.random.normal(ops.shape(z_mean))
        return z_mean + ops.exp(0.5 * z_log_var) * eps


class ActivationMean(layers.Layer):
    """Identity that updates a metric object inside `call()`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.activation_mean = keras.metrics.Mean(name="activation_mean")

    def call(self, inputs):
        self.activation_mean.update_state(inputs)
        return inputs


# ---------------------------------------------------------------- models


def _make_net(base):
    class Net(base):
        """A subclass whose layers are built on the first `fit`."""

        def __init__(self, units=8, classes=3, **kwargs):
            super().__init__(**kwargs)
            self.hidden = layers.Dense(units, activation="relu")
            self.logits = layers.Dense(classes)

        def call(self, inputs):
            return self.logits(self.hidden(inputs))

    return Net


NETS = {keras.Model: _make_net(keras.Model)}
NETS[keras_sam.SAMModel] = _make_net(keras_sam.SAMModel)


def subclass(flavour):
    return NETS[flavour.base](**flavour.kwargs)


def subclass_from_model(flavour):
    model = NETS[keras.Model]()
    wrapped = flavour.wrap(model)
    if flavour.sam:  # converted in place, the user's class kept
        assert wrapped is model and isinstance(wrapped, NETS[keras.Model])
    return wrapped


def sequential(flavour):
    return flavour.wrap(
        keras.Sequential(
            [keras.Input((4,)), layers.Dense(8, activation="relu"),
             layers.Dense(3)]
        )
    )


def vae(flavour):
    inputs = keras.Input((4,))
    h = layers.Dense(8, activation="relu")(inputs)
    z = Sampling()([layers.Dense(2)(h), layers.Dense(2)(h)])
    outputs = layers.Dense(4)(layers.Dense(8, activation="relu")(z))
    return flavour.functional(inputs, outputs)


def multi_io(flavour):
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    h = layers.Dense(8, activation="relu")(layers.Concatenate()([a, b]))
    outputs = {
        "cls": layers.Dense(3, name="cls")(h),
        "reg": layers.Dense(1, name="reg")(h),
    }
    return flavour.functional({"a": a, "b": b}, outputs)


MULTI_DATA = (
    {"a": X, "b": X[:, :2] ** 2},
    {"cls": Y, "reg": X[:, :1] * 2.0},
)
MULTI_COMPILE = {
    "loss": {"cls": ce(), "reg": "mse"},
    "loss_weights": {"cls": 1.0, "reg": 0.5},
    "metrics": {"cls": ["accuracy"], "reg": ["mae"]},
}


def _sequences(n=48, length=6, vocab=20):
    rng = np.random.default_rng(1)
    seqs = rng.integers(1, vocab, size=(n, length))
    lengths = rng.integers(2, length + 1, size=n)
    seqs[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return seqs.astype("int32")


SEQS = _sequences()


def masked_lstm(flavour):
    inputs = keras.Input((6,), dtype="int32")
    h = layers.Embedding(20, 4, mask_zero=True)(inputs)
    h = layers.LSTM(4)(h)
    return flavour.functional(inputs, layers.Dense(3)(h))


WORDS = np.array("the a cat dog sat ran far near big red".split())
TEXT = np.array(
    [" ".join(np.random.default_rng(i).choice(WORDS, 4)) for i in range(48)]
)
TEXT_DATA = tf.data.Dataset.from_tensor_slices((TEXT[:, None], Y)).batch(16)


def text_model(flavour):
    vectorize = layers.TextVectorization(
        max_tokens=16, output_sequence_length=5
    )
    vectorize.adapt(TEXT)
    inputs = keras.Input((1,), dtype="string")
    h = layers.Embedding(16, 4)(vectorize(inputs))
    h = layers.GlobalAveragePooling1D()(h)
    return flavour.functional(inputs, layers.Dense(3)(h))


def transfer(flavour):
    base = keras.Sequential(
        [keras.Input((4,)), layers.Dense(8, activation="relu"),
         layers.Dense(8, activation="relu")],
        name="base",
    )
    inputs = keras.Input((4,))
    outputs = layers.Dense(3)(base(inputs, training=False))
    return flavour.functional(inputs, outputs)


def train_transfer(model, flavour):
    """Frozen base, then fine-tuning with a recompile (keras.io guide)."""
    del flavour
    base = next(l for l in model.layers if isinstance(l, keras.Sequential))
    base.trainable = False
    model.compile(optimizer="sgd", loss=ce(), metrics=["accuracy"])
    first = model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    base.trainable = True
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3), loss=ce(), metrics=["accuracy"]
    )
    return [first, model.fit(X, Y, batch_size=16, epochs=1, verbose=0)]


# ------------------------------------- "Customizing what happens in fit()"


@functools.cache
def guide_class(sam, step):
    """The guide's `CustomModel`; SAM replaces the tape block only.

    Args:
        sam: Bool, subclass `keras_sam.SAMModel` instead of `keras.Model`.
        step: "train_step", "sample_weight", "compute_loss" or "test_step".
    """
    base = keras_sam.SAMModel if sam else keras.Model

    class CustomModel(base):
        def gradients(self, x, y, sample_weight=None):
            if sam:
                return self.compute_sam_gradients(x, y, sample_weight)
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(
                    y=y, y_pred=y_pred, sample_weight=sample_weight
                )
            return tape.gradient(loss, self.trainable_variables), y_pred, loss

        def guide_train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            gradients, y_pred, loss = self.gradients(x, y, sample_weight)
            self.optimizer.apply(gradients, self.trainable_variables)
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss)
                else:
                    metric.update_state(y, y_pred, sample_weight=sample_weight)
            return {m.name: m.result() for m in self.metrics}

        def guide_test_step(self, data):
            x, y = data
            y_pred = self(x, training=False)
            loss = self.compute_loss(y=y, y_pred=y_pred)
            for metric in self.metrics:
                if metric.name != "loss":
                    metric.update_state(y, y_pred)
                else:
                    metric.update_state(loss)
            return {m.name: m.result() for m in self.metrics}

    if step in ("train_step", "sample_weight"):
        CustomModel.train_step = CustomModel.guide_train_step
    elif step == "test_step":
        CustomModel.test_step = CustomModel.guide_test_step
    elif step == "compute_loss":

        class CustomModel(CustomModel):  # noqa: F811 - the guide's name
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.loss_tracker = keras.metrics.Mean(name="loss")
                self.loss_fn = keras.losses.MeanSquaredError()

            def compute_loss(
                self, x=None, y=None, y_pred=None, sample_weight=None,
                training=True,
            ):
                loss = self.loss_fn(y, y_pred, sample_weight)
                self.loss_tracker.update_state(loss)
                return loss

            @property
            def metrics(self):
                return [self.loss_tracker]

    return CustomModel


def guide(step):
    def build(flavour):
        inputs = keras.Input((4,))
        h = layers.Dense(8, activation="relu")(inputs)
        outputs = layers.Dense(1)(h)
        cls = guide_class(flavour.sam, step)
        return cls(inputs, outputs, **flavour.kwargs)

    return build


Y_REG = (X[:, :1] - X[:, 1:2]).astype("float32")
REG = {"loss": "mse", "metrics": ["mae"]}


# ---------------------------------------------------------------- patterns


@dataclasses.dataclass
class Pattern:
    """A user program: `build(flavour)`, `train(model, flavour)`, data.

    Attributes:
        build: Callable, makes the model with the flavour's class.
        train: Callable, compiles and fits it (see `twins.fit_with`).
        data: What `evaluate`/`predict` get after training.
        options: Dict, SAM options of the SAM twin (e.g. `{"m": 2}`).
    """

    build: Callable
    train: Callable
    data: Any = DATA
    options: dict = dataclasses.field(default_factory=dict)


def _callbacks(*factories):
    """Fresh callbacks for each twin (they hold state)."""
    return lambda: [make() for make in factories]


def _on_loss_plateau(callback, epochs, **kwargs):
    """The MLP fitted for `epochs` epochs with a fresh `callback` watching
    a loss that never improves by its min_delta of 10, so that it acts."""
    return Pattern(
        mlp,
        fit_with(
            X, Y, epochs=epochs,
            callbacks=_callbacks(
                lambda: callback(monitor="loss", min_delta=10.0, **kwargs)
            ),
        ),
    )


X45, Y45 = classification_data(n=45)
X_SEQ, Y_SEQ = classification_data(features=12)


def attention(flavour, dropout=0.0):
    """Self-attention over 4 tokens of 3 features (reshaped from 12)."""
    inputs = keras.Input((12,))
    h = layers.Dense(4)(layers.Reshape((4, 3))(inputs))
    h = layers.MultiHeadAttention(2, 2, dropout=dropout, seed=1)(h, h)
    h = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(h))
    return flavour.functional(inputs, layers.Dense(3)(h))

PATTERNS = {
    "functional": Pattern(mlp, fit_with(X, Y)),
    "sequential_from_model": Pattern(sequential, fit_with(X, Y)),
    "subclass_lazy_build": Pattern(subclass, fit_with(X, Y)),
    "subclass_lazy_build_m_2": Pattern(
        subclass, fit_with(X, Y), options={"m": 2}
    ),
    "subclass_from_model": Pattern(subclass_from_model, fit_with(X, Y)),
    "custom_dropout_seed_generator": Pattern(
        functools.partial(mlp, hidden=[lambda: CustomDropout(0.5)]),
        fit_with(X, Y),
    ),
    "unseeded_dropout": Pattern(
        functools.partial(mlp, hidden=[UnseededDropout]), fit_with(X, Y)
    ),
    "unseeded_noise_layer": Pattern(
        functools.partial(mlp, hidden=[Noise]), fit_with(X, Y)
    ),
    "vae_sampling_add_loss": Pattern(
        vae, fit_with(X, X, {"loss": "mse", "metrics": []}), (X, X)
    ),
    "multi_io_loss_dicts": Pattern(
        multi_io, fit_with(*MULTI_DATA, MULTI_COMPILE), MULTI_DATA
    ),
    "class_weight": Pattern(
        mlp, fit_with(X, Y, class_weight={0: 1.0, 1: 2.0, 2: 0.5})
    ),
    "sample_weight": Pattern(
        mlp, fit_with(X, Y, sample_weight=SAMPLE_WEIGHT),
        (X, Y, SAMPLE_WEIGHT),
    ),
    "validation_split": Pattern(mlp, fit_with(X, Y, validation_split=0.25)),
    "validation_data": Pattern(
        mlp, fit_with(X, Y, validation_data=(X[:16], Y[:16]))
    ),
    "early_stopping": _on_loss_plateau(
        keras.callbacks.EarlyStopping, epochs=5, patience=1
    ),
    "reduce_lr_on_plateau": _on_loss_plateau(
        keras.callbacks.ReduceLROnPlateau, epochs=3, patience=0, factor=0.5
    ),
    "guide_train_step": Pattern(
        guide("train_step"), fit_with(X, Y_REG, REG), (X, Y_REG)
    ),
    "guide_train_step_sample_weight": Pattern(
        guide("sample_weight"),
        fit_with(X, Y_REG, REG, sample_weight=SAMPLE_WEIGHT),
        (X, Y_REG),
    ),
    "guide_compute_loss_tracker": Pattern(
        guide("compute_loss"),
        fit_with(X, Y_REG, {"loss": None, "metrics": None}),
        (X, Y_REG),
    ),
    "guide_test_step": Pattern(
        guide("test_step"), fit_with(X, Y_REG, REG), (X, Y_REG)
    ),
    "metric_in_call": Pattern(
        functools.partial(mlp, hidden=[ActivationMean]), fit_with(X, Y)
    ),
    "masking_lstm": Pattern(masked_lstm, fit_with(SEQS, Y), (SEQS, Y)),
    "text_vectorization": Pattern(
        text_model, fit_with(TEXT_DATA), TEXT_DATA
    ),
    "transfer_learning": Pattern(transfer, train_transfer),
    "steps_per_execution_2": Pattern(
        mlp, fit_with(X, Y, {"steps_per_execution": 2})
    ),
    "jit_compile_true": Pattern(mlp, fit_with(X, Y, {"jit_compile": True})),
    "run_eagerly": Pattern(mlp, fit_with(X, Y, {"run_eagerly": True})),
    "jit_compile_false": Pattern(
        mlp, fit_with(X, Y, {"jit_compile": False})
    ),
    "py_dataset": Pattern(mlp, fit_with(Batches(), batch_size=None)),
    "optimizer_ema": Pattern(mlp, fit_with(X, Y, {"optimizer": {
        "class_name": "Adam", "config": {"use_ema": True}}})),
    "gradient_accumulation": Pattern(mlp, fit_with(X, Y, {"optimizer": {
        "class_name": "SGD",
        "config": {"learning_rate": 0.1, "gradient_accumulation_steps": 2},
    }})),
    "m_1": Pattern(mlp, fit_with(X, Y), options={"m": 1}),
    # 1-SAM's closed form for attention, and (with attention dropout) the
    # per-example map that tf.vectorized_map used to crash on.
    "attention_m_1": Pattern(
        attention, fit_with(X_SEQ, Y_SEQ), (X_SEQ, Y_SEQ), {"m": 1}
    ),
    "attention_dropout_m_1": Pattern(
        functools.partial(attention, dropout=0.25), fit_with(X_SEQ, Y_SEQ),
        (X_SEQ, Y_SEQ), {"m": 1},
    ),
    "m_2_ragged_last_batch": Pattern(
        mlp, fit_with(X45, Y45), (X45, Y45), {"m": 2}
    ),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_rho_zero_matches_keras(name, tmp_path):
    pattern = PATTERNS[name]
    twins = run_twins(
        pattern.build, pattern.train, pattern.data, rho=0.0, **pattern.options
    )
    twins.assert_equal(tmp_path)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_rho_positive_trains(name):
    pattern = PATTERNS[name]
    twins = run_twins(
        pattern.build, pattern.train, pattern.data, rho=RHO, **pattern.options
    )
    twins.assert_same_structure()


# ---------------------------------------------------- random draws, warning


class DrawRecorder(keras.callbacks.Callback):
    """Records every `Noise` layer's last draw after each batch."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def on_train_batch_end(self, batch, logs=None):
        layer = next(
            l for l in self.model._flatten_layers() if isinstance(l, Noise)
        )
        self.draws.append(float(layer.last_draw.numpy()))


def test_unseeded_draws_change_every_step_and_match():
    recorders = {}

    def train(model, flavour):
        recorders[flavour.name] = DrawRecorder()
        model.compile(optimizer="sgd", loss=ce())
        return model.fit(
            X, Y, batch_size=16, epochs=2, verbose=0,
            callbacks=[recorders[flavour.name]],
        )

    build = functools.partial(mlp, hidden=[Noise])
    run_twins(build, train, DATA, rho=0.0)
    plain, sam = recorders["plain"].draws, recorders["sam"].draws
    assert len(set(plain)) == len(plain) == 6, plain
    assert len(set(sam)) == len(sam), f"SAM repeats draws: {sam}"
    np.testing.assert_allclose(sam, plain, rtol=1e-6)


def _own_train_step(use_sam_gradients):
    class Net(keras_sam.SAMModel):
        def train_step(self, data):
            x, y = data
            if use_sam_gradients:
                grads, _, loss = self.compute_sam_gradients(x, y)
            else:
                with tf.GradientTape() as tape:
                    y_pred = self(x, training=True)
                    loss = self.compute_loss(y=y, y_pred=y_pred)
                grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            return {"loss": loss}

    inputs = keras.Input((4,))
    model = Net(inputs, layers.Dense(3)(inputs), rho=RHO)
    model.compile(optimizer="sgd", loss=ce())
    return model


def test_train_step_without_compute_sam_gradients_warns():
    model = _own_train_step(use_sam_gradients=False)
    with pytest.warns(UserWarning, match="compute_sam_gradients"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)


def test_train_step_with_compute_sam_gradients_does_not_warn():
    model = _own_train_step(use_sam_gradients=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    assert not [w for w in caught if "compute_sam_gradients" in str(w.message)]


# ------------------------------------------------------- callbacks, files


@pytest.mark.parametrize("weights_only", [True, False])
def test_model_checkpoint(weights_only, tmp_path):
    suffix = ".weights.h5" if weights_only else ".keras"
    paths = {
        name: str(tmp_path / f"{name}{suffix}") for name in ("plain", "sam")
    }

    def train(model, flavour):
        checkpoint = keras.callbacks.ModelCheckpoint(
            paths[flavour.name], save_weights_only=weights_only
        )
        return fit_with(X, Y, callbacks=[checkpoint])(model, flavour)

    twins = run_twins(mlp, train, DATA, rho=0.0)
    twins.assert_equal()
    if weights_only:  # each file loads into the other twin's class
        for target, source in (("plain", "sam"), ("sam", "plain")):
            model = getattr(twins, target).model
            model.load_weights(paths[source])
            assert_weights_equal(getattr(twins, source).model, model)
    else:
        plain = keras.saving.load_model(paths["plain"])
        sam = keras.saving.load_model(paths["sam"])
        assert not isinstance(plain, keras_sam.SAMModel)
        assert isinstance(sam, keras_sam.SAMModel)
        assert float(sam.rho.numpy()) == 0.0
        assert_weights_equal(plain, sam)


def test_csv_logger_columns_and_values(tmp_path):
    paths = {name: tmp_path / f"{name}.csv" for name in ("plain", "sam")}

    def train(model, flavour):
        logger = keras.callbacks.CSVLogger(str(paths[flavour.name]))
        return fit_with(
            X, Y, validation_split=0.25, callbacks=[logger]
        )(model, flavour)

    run_twins(mlp, train, DATA, rho=0.0).assert_equal()
    rows = {}
    for name, path in paths.items():
        with open(path) as f:
            rows[name] = list(csv.DictReader(f))
    assert set(SAM_ONLY_KEYS) <= set(rows["sam"][0])
    sam_rows = [strip_sam_logs(row) for row in rows["sam"]]
    assert list(sam_rows[0]) == list(rows["plain"][0])
    plain = [{k: float(v) for k, v in r.items()} for r in rows["plain"]]
    sam = [{k: float(v) for k, v in r.items()} for r in sam_rows]
    assert_nested_close(plain, sam, atol=1e-6)


def test_tensorboard_runs(tmp_path):
    def train(model, flavour):
        board = keras.callbacks.TensorBoard(str(tmp_path / flavour.name))
        return fit_with(X, Y, callbacks=[board])(model, flavour)

    run_twins(mlp, train, DATA, rho=0.0).assert_equal()
    for name in ("plain", "sam"):
        assert os.listdir(tmp_path / name / "train")


# ------------------------------------------------ weights, .keras files


def test_weights_move_both_ways(tmp_path):
    keras.utils.set_random_seed(1)
    plain = mlp(PLAIN)
    keras.utils.set_random_seed(2)
    sam = mlp(Flavour(sam=True, rho=0.3))
    keras.utils.set_random_seed(3)
    other_sam = mlp(Flavour(sam=True, rho=0.1))
    assert [v.name for v in sam.weights] == [v.name for v in plain.weights]

    sam.set_weights(plain.get_weights())
    assert_weights_equal(plain, sam)
    plain.set_weights(other_sam.get_weights())
    assert_weights_equal(other_sam, plain)

    plain_path = str(tmp_path / "plain.weights.h5")
    sam_path = str(tmp_path / "other_sam.weights.h5")
    keras.utils.set_random_seed(4)
    mlp(PLAIN).save_weights(plain_path)
    other_sam.save_weights(sam_path)
    for path in (plain_path, sam_path):
        sam.load_weights(path)
        plain.load_weights(path)
        assert_weights_equal(plain, sam)
        assert float(sam.rho.numpy()) == pytest.approx(0.3)
    assert_weights_equal(other_sam, sam)


def test_keras_file_keeps_rho_options_and_continues(tmp_path):
    model = mlp(Flavour(sam=True, rho=0.07, options={"p": 3.0}))
    model.compile(optimizer="adam", loss=ce(), metrics=["accuracy"])
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "sam.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert float(loaded.rho.numpy()) == pytest.approx(0.07)
    assert loaded.p == 3.0 and loaded.get_config()["p"] == 3.0
    histories = []
    for twin in (model, loaded):
        keras.utils.set_random_seed(5)
        histories.append(
            twin.fit(X, Y, batch_size=16, epochs=1, verbose=0).history
        )
    assert set(SAM_ONLY_KEYS) <= set(histories[1])
    assert_nested_close(histories[0], histories[1])
    assert_weights_equal(model, loaded)


def test_on_batch_methods_match_keras_model():
    """`train_on_batch`, `test_on_batch` and `predict_on_batch` with rho=0
    give what keras.Model gives; SAM's keys only in training logs."""
    outputs = {}
    for flavour in (PLAIN, Flavour(sam=True, rho=0.0)):
        keras.utils.set_random_seed(0)
        model = mlp(flavour)
        model.compile(optimizer="sgd", loss=ce(), metrics=["accuracy"])
        logs = [model.train_on_batch(X[:16], Y[:16], return_dict=True)
                for _ in range(3)]
        outputs[flavour.name] = (
            logs, model.test_on_batch(X[:16], Y[:16], return_dict=True),
            model.predict_on_batch(X[:4]), model,
        )
    plain, sam = outputs["plain"], outputs["sam"]
    assert set(SAM_ONLY_KEYS) <= set(sam[0][-1])
    assert_nested_close([strip_sam_logs(l) for l in sam[0]], plain[0])
    assert_nested_close(sam[1], plain[1])
    np.testing.assert_array_equal(sam[2], plain[2])
    assert_weights_equal(plain[3], sam[3])


def test_legacy_h5_file_loads_like_keras_model(tmp_path):
    """`model.save("x.h5")` (Keras' legacy format) reloads a SAMModel with
    its settings and outputs, as it reloads a keras.Model."""
    loaded = {}
    for flavour in (PLAIN, Flavour(sam=True, rho=0.0, options={"m": 2})):
        keras.utils.set_random_seed(0)
        model = mlp(flavour)
        model.compile(optimizer="adam", loss=ce(), metrics=["accuracy"])
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
        path = str(tmp_path / f"{flavour.name}.h5")
        model.save(path)
        loaded[flavour.name] = keras.saving.load_model(path)
        np.testing.assert_allclose(
            loaded[flavour.name].predict(X, verbose=0),
            model.predict(X, verbose=0), atol=1e-6,
        )
    assert isinstance(loaded["sam"], keras_sam.SAMModel)
    assert float(loaded["sam"].rho.numpy()) == 0.0  # not the default 0.05
    assert loaded["sam"].m == 2
    assert_weights_equal(loaded["plain"], loaded["sam"])


# ------------------------------------ mixed precision, distribution


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def test_mixed_precision(mixed_float16, tmp_path):
    run_twins(mlp, fit_with(X, Y), DATA, rho=0.0).assert_equal(tmp_path)
    run_twins(mlp, fit_with(X, Y), DATA, rho=RHO).assert_same_structure()


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.0, RHO])
def test_mirrored_strategy(rho):
    strategy = mirrored(2)
    twins = run_twins(mlp, fit_with(X, Y), DATA, rho=rho, strategy=strategy)
    if rho == 0.0:
        twins.assert_equal(atol=1e-5)
    else:
        twins.assert_same_structure()
