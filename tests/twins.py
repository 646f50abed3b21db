"""Twin runs: one Keras program on `keras.Model` and on `keras_sam.SAMModel`.

The drop-in invariant (DESIGN.md): whatever a user does with `keras.Model`
they can do with `SAMModel`, and with `rho=0` the two give the same result.
A twin run builds a model twice from the same seed, once per `Flavour`
(plain Keras, SAM), copies the plain twin's initial weights into the SAM
twin, trains both with the same program and seed, and records what a user
sees: histories, `evaluate` (list and dict), `predict`, weights, files.

    twins = run_twins(build, train, data, rho=0.0)
    twins.assert_equal(tmp_path)      # rho = 0: same results
    twins.assert_same_structure()     # rho > 0: same shapes, keys, types

`build(flavour)` returns a model made with `flavour.functional(...)`,
`flavour.base` (a subclass) or `flavour.wrap(model)`; `train(model,
flavour)` compiles and fits it and returns a `History` (or a list of them).
"""

import contextlib
import dataclasses
import os
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

import keras_sam

SEED = 1234
SAM_ONLY_KEYS = ("rho", "grad_norm", "sharpness")
ATOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Flavour:
    """How one twin makes models: plain Keras, or SAM with `rho`, options.

    Attributes:
        sam: Bool, whether this is the SAM twin.
        rho: Float, SAM's rho (ignored by the plain twin).
        options: Dict, other `SAMModel` arguments (e.g. `m`).
    """

    sam: bool
    rho: float = 0.0
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return "sam" if self.sam else "plain"

    @property
    def base(self) -> type:
        """The class to subclass: `keras_sam.SAMModel` or `keras.Model`."""
        return keras_sam.SAMModel if self.sam else keras.Model

    @property
    def kwargs(self) -> dict:
        """Constructor arguments of `base`: `{rho, **options}` or `{}`."""
        return {"rho": self.rho, **self.options} if self.sam else {}

    def functional(self, inputs, outputs, **kwargs) -> keras.Model:
        """`keras.Model(inputs, outputs)` or `SAMModel(..., rho=rho)`."""
        return self.base(inputs, outputs, **self.kwargs, **kwargs)

    def wrap(self, model: keras.Model) -> keras.Model:
        """`model` itself, or `SAMModel.from_model(model, rho=rho)`."""
        if not self.sam:
            return model
        return keras_sam.SAMModel.from_model(model, **self.kwargs)


PLAIN = Flavour(sam=False)


@dataclasses.dataclass
class Run:
    """What one twin's user saw.

    Attributes:
        model: The trained model.
        histories: List of `History.history` dicts, one per `fit`.
        evaluate: `model.evaluate(...)` (a float or a list).
        evaluate_dict: `model.evaluate(..., return_dict=True)`.
        predict: `model.predict(...)`.
    """

    model: keras.Model
    histories: list
    evaluate: Any
    evaluate_dict: dict
    predict: Any


@dataclasses.dataclass
class Twins:
    """The plain and the SAM run of one program; see `run_twins`."""

    plain: Run
    sam: Run
    build: Callable
    data: Any
    flavours: tuple
    seed: int = SEED

    def assert_equal(self, tmp_path=None, atol=ATOL):
        """Asserts the rho = 0 invariant; reports every broken part at once.

        Args:
            tmp_path: A directory (`pathlib.Path`) for `.weights.h5` files;
                None skips the weight-file round trip.
            atol: Float, the tolerance for values (also relative).
        """
        problems = _sam_log_problems(self.sam)
        checks = [
            ("history", self._check_histories),
            ("evaluate", self._check_evaluate),
            ("predict", self._check_predict),
            ("weights", self._check_weights),
        ]
        if tmp_path is not None:
            checks.append(
                ("weight files", lambda a: self._check_files(tmp_path, a))
            )
        for name, check in checks:
            try:
                check(atol)
            except Exception as error:  # noqa: BLE001 - report all parts
                problems.append(f"{name}: {type(error).__name__}: {error}")
        if problems:
            raise AssertionError("twins differ:\n- " + "\n- ".join(problems))

    def assert_same_structure(self):
        """Asserts the rho > 0 invariant: only the weights may differ."""
        problems = _sam_log_problems(self.sam)
        plain_keys = [sorted(h) for h in self.plain.histories]
        sam_keys = [sorted(strip_sam_logs(h)) for h in self.sam.histories]
        if plain_keys != sam_keys:
            problems.append(f"history keys {plain_keys} != {sam_keys}")
        for name in ("evaluate", "evaluate_dict", "predict"):
            a, b = getattr(self.plain, name), getattr(self.sam, name)
            if _structure(a) != _structure(b):
                problems.append(
                    f"{name} structure {_structure(a)} != {_structure(b)}"
                )
        for h in self.sam.histories:
            for key, values in strip_sam_logs(h).items():
                if not np.all(np.isfinite(values)):
                    problems.append(f"history[{key!r}] not finite: {values}")
        if problems:
            raise AssertionError("twins differ:\n- " + "\n- ".join(problems))
        weights_moved = any(
            not np.allclose(a, b, atol=ATOL)
            for a, b in zip(
                self.plain.model.get_weights(), self.sam.model.get_weights()
            )
        )
        assert weights_moved, "rho > 0 trained exactly like rho = 0"

    def _check_histories(self, atol):
        plain = self.plain.histories
        sam = [strip_sam_logs(h) for h in self.sam.histories]
        assert_nested_close(plain, sam, atol, "history")

    def _check_evaluate(self, atol):
        assert_nested_close(
            self.plain.evaluate, self.sam.evaluate, atol, "list"
        )
        assert_nested_close(
            self.plain.evaluate_dict, self.sam.evaluate_dict, atol, "dict"
        )

    def _check_predict(self, atol):
        assert_nested_close(self.plain.predict, self.sam.predict, atol)

    def _check_weights(self, atol):
        assert_weights_equal(self.plain.model, self.sam.model, atol)

    def _check_files(self, tmp_path, atol):
        """Each twin's `.weights.h5` loads into a fresh model of the other."""
        plain_flavour, sam_flavour = self.flavours
        for source, flavour in ((self.plain, sam_flavour),
                                (self.sam, plain_flavour)):
            name = "sam" if flavour is plain_flavour else "plain"
            path = os.path.join(tmp_path, f"{name}.weights.h5")
            source.model.save_weights(path)
            keras.utils.set_random_seed(self.seed + 1)  # other init values
            fresh = self.build(flavour)
            _ensure_built(fresh, self.data)
            fresh.load_weights(path)
            assert_weights_equal(source.model, fresh, atol)


def run_twins(
    build, train, data, rho=0.0, seed=SEED, strategy=None, control=False,
    **options
) -> Twins:
    """Builds and trains the plain and the SAM twin of one program.

    Args:
        build: Callable, `build(flavour)` returns an (unbuilt or built,
            uncompiled) model.
        train: Callable, `train(model, flavour)` compiles and fits the model
            and returns a `History` or a list of them.
        data: `(x, y[, sample_weight])` tuple, `(x,)`, or a `tf.data`
            dataset, for `evaluate` and `predict` after training.
        rho: Float, the SAM twin's rho.
        seed: Int, set with `keras.utils.set_random_seed` before each
            build and before each `train`.
        strategy: Optional `tf.distribute.Strategy`: build and train run in
            its scope.
        control: Bool, make both twins plain Keras: whether Keras itself
            reproduces the program (a control for a failing twin).
        **options: Other `SAMModel` arguments for the SAM twin.

    Returns:
        A `Twins`.
    """
    flavours = (PLAIN, Flavour(sam=True, rho=rho, options=options))
    if control:
        flavours = (PLAIN, PLAIN)
    scope = strategy.scope if strategy else contextlib.nullcontext
    models = []
    for flavour in flavours:
        keras.utils.set_random_seed(seed)
        with scope():
            models.append(build(flavour))
    plain, sam = models
    # Lazily built subclasses have no weights yet: the seeds alone make
    # their initial values equal. A SAM twin with extra weights cannot take
    # the plain ones either; `assert_equal` reports that.
    if plain.built and sam.built and len(plain.weights) == len(sam.weights):
        sam.set_weights(plain.get_weights())
    runs = []
    for flavour, model in zip(flavours, models):
        keras.utils.set_random_seed(seed)
        with scope():
            result = train(model, flavour)
        results = result if isinstance(result, (list, tuple)) else [result]
        runs.append(
            Run(
                model=model,
                histories=[h.history for h in results],
                evaluate=_evaluate(model, data),
                evaluate_dict=_evaluate(model, data, return_dict=True),
                predict=model.predict(_x(data), verbose=0),
            )
        )
    return Twins(*runs, build=build, data=data, flavours=flavours, seed=seed)


def strip_sam_logs(logs: dict) -> dict:
    """`logs` without SAM's own keys (`rho`, `grad_norm`, `sharpness`)."""
    return {k: v for k, v in logs.items() if k not in SAM_ONLY_KEYS}


def assert_nested_close(a, b, atol=ATOL, what="value"):
    """Asserts equal nested structure (types, keys, lengths) and values."""
    assert _structure(a) == _structure(b), (
        f"{what} structure differs: {_structure(a)} != {_structure(b)}"
    )
    for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind in "OSU":
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(
                x.astype("float64"), y.astype("float64"), rtol=atol,
                atol=atol, err_msg=what,
            )


def assert_weights_equal(plain, sam, atol=ATOL):
    """`model.weights` of both: same length, names and values."""
    plain_names = [v.name for v in plain.weights]
    sam_names = [v.name for v in sam.weights]
    assert plain_names == sam_names, (
        f"weight names differ: {plain_names} != {sam_names}"
    )
    for v, w in zip(plain.weights, sam.weights):
        np.testing.assert_allclose(
            np.asarray(v.numpy(), "float64"),
            np.asarray(w.numpy(), "float64"),
            rtol=atol, atol=atol, err_msg=v.path,
        )


def classification_data(n=48, features=4, classes=3, seed=0):
    """A small random classification set: float32 `x`, int `y`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.integers(0, classes, size=(n,))
    return x, y


def mlp(flavour, features=4, classes=3, units=8, hidden=()):
    """A functional MLP (logits) made by `flavour`.

    Args:
        flavour: The `Flavour` whose class makes the model.
        features, classes, units: Ints, the input, output and hidden sizes.
        hidden: Callables returning layers (e.g. layer classes) to insert
            after the hidden layer: each model gets new instances.
    """
    inputs = keras.Input((features,))
    h = keras.layers.Dense(units, activation="relu")(inputs)
    for make_layer in hidden:
        h = make_layer()(h)
    outputs = keras.layers.Dense(classes)(h)
    return flavour.functional(inputs, outputs)


def fit_with(x, y=None, compile_kwargs=None, **fit_kwargs) -> Callable:
    """A `train(model, flavour)` that compiles (SGD, logits CE) and fits.

    Args:
        x, y: What `fit` gets (`x` may be a `tf.data` dataset).
        compile_kwargs: Dict overriding the `compile` defaults.
        **fit_kwargs: Overriding `fit`'s defaults (batch 16, 2 epochs);
            `callbacks` may be a callable returning new callbacks, so that
            each twin gets its own.
    """
    compile_kwargs = {
        "optimizer": "sgd",
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "metrics": ["accuracy"],
        **(compile_kwargs or {}),
    }
    defaults = {"epochs": 2, "verbose": 0}
    if not isinstance(x, tf.data.Dataset):
        defaults["batch_size"] = 16
    fit_kwargs = {**defaults, **fit_kwargs}

    def train(model, flavour):
        del flavour
        kwargs = dict(fit_kwargs)
        if callable(kwargs.get("callbacks")):
            kwargs["callbacks"] = kwargs["callbacks"]()
        model.compile(**compile_kwargs)
        return model.fit(x, y, **kwargs)

    return train


def _sam_log_problems(run: Run) -> list:
    """SAM's keys: in every training log, never `val_*` or in evaluate."""
    problems = []
    for history in run.histories:
        missing = [k for k in SAM_ONLY_KEYS if k not in history]
        if missing:
            problems.append(f"SAM training logs lack {missing}")
        val = [k for k in history if k.startswith("val_")
               and k[4:] in SAM_ONLY_KEYS]
        if val:
            problems.append(f"SAM keys in validation logs: {val}")
    extra = [k for k in run.evaluate_dict if k in SAM_ONLY_KEYS]
    if extra:
        problems.append(f"SAM keys in evaluate: {extra}")
    return problems


def _structure(value):
    """Types, keys and shapes of a nested value, values left out."""
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_structure(v) for v in value])
    if isinstance(value, (float, int, np.floating)):
        return "scalar"
    return ("array", tuple(np.shape(value)))


def _x(data):
    return data if isinstance(data, tf.data.Dataset) else data[0]


def _evaluate(model, data, **kwargs):
    if isinstance(data, tf.data.Dataset):
        return model.evaluate(data, verbose=0, **kwargs)
    x, y, sample_weight = (tuple(data) + (None, None))[:3]
    return model.evaluate(
        x, y, sample_weight=sample_weight, batch_size=16, verbose=0, **kwargs
    )


def _ensure_built(model, data):
    """Builds a lazily built subclass by predicting on its data."""
    if not model.built or not model.weights:
        model.predict(_x(data), verbose=0)
