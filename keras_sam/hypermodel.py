"""`SAMHyperModel`: a KerasTuner HyperModel that trains with SAM and tunes rho.

Each trial builds a fresh model (from a function, or by cloning a model),
wraps it in a `SAMModel`, sets rho (and optionally m, the base learning rate
and a rho schedule) from the trial's hyperparameters, and compiles it. The
default space is Foret et al.'s grid of rho (section 3.1); `keras_sam.tuner`
runs the searches.
"""

import inspect
from typing import Any, Callable, Optional, Sequence

import keras
import keras_tuner
import numpy as np

from keras_sam import model as model_module
from keras_sam import sharding

PAPER_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""Foret et al.'s grid of rho values (section 3.1)."""

BAYESIAN_RHO_RANGE = (0.005, 1.0)
"""Default bounds of the log-uniform rho of `bayesian_search`."""

OBJECTIVE = keras_tuner.Objective("val_accuracy", "max")
"""Best-epoch validation accuracy: KerasTuner keeps each trial's best epoch."""


def check_rho_values(
    rho_values, argument: str = "rho_values", example=PAPER_GRID
) -> tuple:
    """Validates a grid of values > 0 (rho) and returns a tuple of floats."""
    try:
        values = tuple(np.ravel(np.asarray(rho_values, "float64")).tolist())
    except (TypeError, ValueError):
        values = ()
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise ValueError(
            f"`{argument}` must be a non-empty sequence of numbers > 0, "
            f"e.g. {example}. Received: {argument}={rho_values!r}"
        )
    return values


def check_rho_range(rho_range, argument: str = "rho_range") -> tuple:
    """Validates `(min, max)` bounds of a log-uniform rho, 0 < min < max."""
    try:
        low, high = (float(v) for v in rho_range)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not (0 < low < high and np.isfinite(high)):
        raise ValueError(
            f"`{argument}` must be (min, max) with 0 < min < max: rho is "
            "searched on a log scale, so min must be positive, e.g. "
            f"{BAYESIAN_RHO_RANGE}. Received: {argument}={rho_range!r}"
        )
    return low, high


def _fresh_copy(obj):
    """A new optimizer or metric built from `obj`'s config (no shared state)."""
    if isinstance(obj, keras.optimizers.Optimizer):
        return keras.optimizers.deserialize(keras.optimizers.serialize(obj))
    if isinstance(obj, keras.metrics.Metric):
        return keras.metrics.deserialize(keras.metrics.serialize(obj))
    return obj


class SAMHyperModel(keras_tuner.HyperModel):
    """A `keras_tuner.HyperModel` that trains a model with SAM and tunes rho.

    Each trial builds a fresh model, from `build_model` or by cloning
    `model` (`keras.models.clone_model`: new weights), wraps it in a
    `SAMModel` unless it is one, sets rho (and, when tuned, `m` and the
    learning rate) from the trial's hyperparameters, and compiles it.

    Hyperparameters: "rho" (always), "m", "learning_rate" and
    "rho_schedule" (only when their argument is given). A tuner's own
    `hyperparameters=` overrides these declarations, as usual in KerasTuner.

    Args:
        build_model: Callable returning an uncompiled `keras.Model` or a
            `SAMModel`; it receives the trial's `hp` if it takes an
            argument. Give this or `model` (a model given here is taken as
            `model`).
        model: A `keras.Model` (or `SAMModel`) to clone for each trial.
        input_shape: Tuple, the shape of one example, needed only for
            models without defined inputs (see `SAMModel.from_model`).
        optimizer: Keras optimizer, name or config; copied for each trial.
            Defaults to "sgd".
        loss: Keras loss. Defaults to "sparse_categorical_crossentropy".
        metrics: List of metrics; must produce the tuner's objective
            (by default "accuracy", logged as "val_accuracy").
        rho: Sequence of rho values > 0, the grid of "rho". Defaults to
            `PAPER_GRID`.
        rho_range: `(min, max)` with 0 < min < max: tune "rho" log-uniformly
            instead of on a grid. Give `rho` or `rho_range`, not both.
        m: Optional sequence of integers >= 1, the values of "m" (examples
            per perturbation, Foret et al. section 4.1). Not tuned if None.
        learning_rate: Optional sequence of base learning rates to tune.
        rho_schedule: Optional sequence of schedule names, the values of
            the "rho_schedule" choice: names of `keras_sam.schedules.by_name`
            ("constant", "step_decay", "exp_decay", "step_increase",
            "cosine"), applied per epoch from the trial's rho by
            `keras_sam.callbacks.RhoScheduler`. Or a mapping from names to
            `factory(rho)` returning any schedule `epoch -> rho`. Not tuned
            if None.
        p: Float > 1 or inf, the perturbation norm of wrapped models.
        seed: Optional integer; if given, each trial calls
            `keras.utils.set_random_seed(seed)` before building, so that
            trials differ only by their hyperparameters.
        **compile_kwargs: Other arguments of `Model.compile`.

    Example:

    >>> import keras, keras_tuner
    >>> def build():
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3,
    ...         activation="softmax")])
    >>> hypermodel = SAMHyperModel(build, rho=[0.05, 0.1])
    >>> model = hypermodel.build(keras_tuner.HyperParameters())
    >>> round(float(model.rho.numpy()), 6)
    0.05

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021: section 3.1 (grid search on a
        10% validation split), appendix C.1 (clean validation set).
        Alexandru, "Sharpness-aware minimisation and label noise",
        section 7 (Bayesian optimisation of rho; rho schedules).
    """

    def __init__(
        self,
        build_model: Optional[Callable] = None,
        *,
        model: Optional[keras.Model] = None,
        input_shape: Optional[tuple] = None,
        optimizer: Any = "sgd",
        loss: Any = "sparse_categorical_crossentropy",
        metrics: Sequence = ("accuracy",),
        rho: Optional[Sequence[float]] = None,
        rho_range: Optional[tuple] = None,
        m: Optional[Sequence[int]] = None,
        learning_rate: Optional[Sequence[float]] = None,
        rho_schedule: Optional[dict] = None,
        p: float = 2.0,
        seed: Optional[int] = None,
        name: Optional[str] = None,
        **compile_kwargs,
    ):
        super().__init__(name=name)
        if isinstance(build_model, keras.Model) and model is None:
            build_model, model = None, build_model
        if (build_model is None) == (model is None):
            raise ValueError(
                "Pass exactly one of `build_model` (a function returning a "
                "Keras model) and `model` (a Keras model to clone). Received: "
                f"build_model={build_model!r}, model={model!r}"
            )
        if build_model is not None and not callable(build_model):
            raise ValueError(
                "`build_model` must be a callable returning a Keras model; "
                "pass a model instance as `model=`. Received: "
                f"build_model={build_model!r}"
            )
        if rho is not None and rho_range is not None:
            raise ValueError(
                "Pass `rho` (a grid) or `rho_range` (log-uniform bounds), not "
                f"both. Received: rho={rho!r}, rho_range={rho_range!r}"
            )
        self.rho_values = self.rho_range = None
        if rho_range is not None:
            self.rho_range = check_rho_range(rho_range)
        else:
            grid = PAPER_GRID if rho is None else rho
            self.rho_values = check_rho_values(grid, "rho")
        self.m_values = None if m is None else self._check_m_values(m)
        self.learning_rates = None
        if learning_rate is not None:
            self.learning_rates = check_rho_values(
                learning_rate, "learning_rate", example=(0.01, 0.1)
            )
        self.rho_schedule = None
        if rho_schedule is not None:
            self.rho_schedule = self._check_schedules(rho_schedule)
        self.build_model = build_model
        self.model = model
        self.input_shape = input_shape
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = list(metrics)
        self.p = p
        self.seed = seed
        self.compile_kwargs = compile_kwargs

    @staticmethod
    def _check_m_values(m_values) -> tuple:
        values = tuple(m_values)
        if not values:
            raise ValueError(
                "`m` must be a non-empty sequence of integers >= 1, or None "
                f"not to tune m. Received: m={m_values!r}"
            )
        return tuple(sharding.check_m(v) for v in values)

    @staticmethod
    def _check_schedules(rho_schedule) -> dict:
        if isinstance(rho_schedule, str):
            rho_schedule = [rho_schedule]
        if not isinstance(rho_schedule, dict):
            rho_schedule = {name: None for name in rho_schedule}
        if not rho_schedule or not all(
            isinstance(name, str) and (f is None or callable(f))
            for name, f in rho_schedule.items()
        ):
            raise ValueError(
                "`rho_schedule` must be a non-empty sequence of schedule "
                "names, e.g. ['constant', 'step_decay'], or a mapping from "
                "names to `factory(rho)` returning a schedule. Received: "
                f"rho_schedule={rho_schedule!r}"
            )
        if any(f is None for f in rho_schedule.values()):
            from keras_sam import schedules

            for name, factory in rho_schedule.items():
                if factory is None:
                    schedules.by_name(name, 0.05)  # raises on unknown names
        return dict(rho_schedule)

    def declare(self, hp) -> dict:
        """Declares this model's hyperparameters in `hp`; returns values."""
        if self.rho_range:
            low, high = self.rho_range
            rho = hp.Float("rho", low, high, sampling="log")
        else:
            rho = hp.Choice("rho", list(self.rho_values))
        values = {"rho": rho}
        if self.m_values:
            values["m"] = hp.Choice("m", list(self.m_values))
        if self.learning_rates:
            values["learning_rate"] = hp.Choice(
                "learning_rate", list(self.learning_rates)
            )
        if self.rho_schedule:
            values["rho_schedule"] = hp.Choice(
                "rho_schedule", list(self.rho_schedule)
            )
        return values

    def _base_model(self, hp):
        """The trial's model before SAM wrapping: built or cloned fresh."""
        if self.build_model is not None:
            try:
                takes_hp = bool(inspect.signature(self.build_model).parameters)
            except (TypeError, ValueError):
                takes_hp = True
            built = self.build_model(hp) if takes_hp else self.build_model()
            if not isinstance(built, keras.Model):
                raise TypeError(
                    "`build_model` must return a keras.Model. Received: "
                    f"{built!r} of type {type(built).__name__}"
                )
            return built, {}
        source, sam_kwargs = self.model, {}
        if isinstance(source, model_module.SAMModel):
            # clone_model drops SAMModel's own arguments: clone the graph.
            sam_kwargs = {"m": source.m, "p": source.p}
            source = keras.Model(
                source.inputs, source.outputs, name=source.name
            )
        return keras.models.clone_model(source), sam_kwargs

    def build(self, hp):
        values = self.declare(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        model, sam_kwargs = self._base_model(hp)
        rho = model_module.check_rho(values["rho"])
        if isinstance(model, model_module.SAMModel):
            model.rho.assign(rho)
            if "m" in values:
                model.m = sharding.check_m(values["m"])
        else:
            sam_kwargs.setdefault("p", self.p)
            if "m" in values:
                sam_kwargs["m"] = values["m"]
            model = model_module.SAMModel.from_model(
                model, input_shape=self.input_shape, rho=rho, **sam_kwargs
            )
        optimizer = self.optimizer
        if isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
        if isinstance(optimizer, dict):
            optimizer = keras.optimizers.deserialize(optimizer)
        if "learning_rate" in values:
            config = keras.optimizers.serialize(optimizer)
            config["config"]["learning_rate"] = values["learning_rate"]
            optimizer = keras.optimizers.deserialize(config)
        model.compile(
            optimizer=_fresh_copy(optimizer),
            loss=self.loss,
            metrics=[_fresh_copy(metric) for metric in self.metrics],
            **self.compile_kwargs,
        )
        return model

    def fit(self, hp, model, *args, **kwargs):
        if self.rho_schedule:
            from keras_sam import schedules
            from keras_sam.callbacks import RhoScheduler

            name = hp.get("rho_schedule")
            factory = self.rho_schedule[name]
            rho = float(model.rho.numpy())
            if factory is None:
                schedule = schedules.by_name(name, rho)
            else:
                schedule = factory(rho)
            callbacks = list(kwargs.pop("callbacks", None) or [])
            kwargs["callbacks"] = [RhoScheduler(schedule)] + callbacks
        return model.fit(*args, **kwargs)
