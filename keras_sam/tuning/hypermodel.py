"""`SAMHyperModel`: a KerasTuner HyperModel that trains with SAM and tunes rho.

Each trial builds a fresh model (from a function, or by cloning a model),
wraps it in a `SAMModel` with the trial's rho (and optionally m), and
compiles it the way the user did: the model's own optimizer (a new one per
trial, from its config), loss, metrics and other compile arguments; only
the hyperparameters of the search space (rho, optionally m, the base
learning rate and a rho schedule) vary. The default space is Foret et al.'s
grid of rho (section 3.1); `keras_sam.tuning.search` runs the searches.

KerasTuner is an optional dependency (`pip install "keras_sam[tuning]"`):
this module imports it when a hypermodel is created, not when it is
imported.
"""

import functools
import inspect
from typing import Any, Callable, Optional, Sequence

import keras

from keras_sam import model as model_module
from keras_sam.core.options import check_m
from keras_sam.tuning import space
from keras_sam.tuning import trials
from keras_sam.tuning.space import PAPER_GRID
from keras_sam.tuning.space import check_rho_range
from keras_sam.tuning.space import check_rho_values
from keras_sam.tuning.space import import_keras_tuner

def __getattr__(name):  # PEP 562: `OBJECTIVE` stays lazy.
    return space.lazy_attribute(__name__, name)


@functools.cache
def _tunable_class(cls):
    """`cls` with `keras_tuner.HyperModel` as a base (made on first use)."""
    keras_tuner = import_keras_tuner()
    if issubclass(cls, keras_tuner.HyperModel):
        return cls
    return type(
        cls.__name__,
        (cls, keras_tuner.HyperModel),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
         "__doc__": cls.__doc__},
    )


class SAMHyperModel:
    """A `keras_tuner.HyperModel` that trains a model with SAM and tunes rho.

    Each trial builds a fresh model, from `build_model` or by cloning
    `model` (`keras.models.clone_model`: new weights), and makes it a
    `SAMModel` with the trial's rho (and m, when tuned), keeping every SAM
    option of a `SAMModel` it builds or clones. It compiles the trial's
    model the way the user compiled theirs: a model that is compiled (the
    `model` given, or what `build_model` returns) keeps its optimizer
    (a new instance per trial, from its class and config), loss, metrics,
    loss weights and other compile arguments. The arguments given here
    override the model's; what neither names gets the defaults: "sgd",
    cross-entropy for integer or one-hot labels
    (`keras_sam.trials.crossentropy`), and ["accuracy"].

    Hyperparameters: "rho" (always), "m", "learning_rate" and
    "rho_schedule" (only when their argument is given). A tuner's own
    `hyperparameters=` overrides these declarations, as usual in KerasTuner.

    Instances are `keras_tuner.HyperModel`s: the class gains that base when
    the first one is created, so that importing keras_sam does not need
    KerasTuner; creating one without it raises an `ImportError` naming
    `pip install "keras_sam[tuning]"`.

    Args:
        build_model: Callable returning a `keras.Model` or a `SAMModel`,
            compiled or not; it receives the trial's `hp` if it takes an
            argument. Give this or `model` (a model given here is taken as
            `model`).
        model: A `keras.Model` (or `SAMModel`), compiled or not, to clone
            for each trial.
        input_shape: Tuple, the shape of one example, needed only for
            models without defined inputs (see `SAMModel.from_model`).
        optimizer: Optional Keras optimizer, name or config, instead of the
            model's; a new one is built from it for each trial.
        loss: Optional Keras loss, instead of the model's.
        metrics: Optional list of metrics, instead of the model's; they
            must produce the tuner's objective (by default "accuracy",
            logged as "val_accuracy").
        rho: Sequence of rho values > 0, the grid of "rho". Defaults to
            `PAPER_GRID`.
        rho_range: `(min, max)` with 0 < min < max: tune "rho" log-uniformly
            instead of on a grid. Give `rho` or `rho_range`, not both.
        m: Optional sequence of integers >= 1, the values of "m" (examples
            per perturbation, Foret et al. section 4.1). Not tuned if None.
        learning_rate: Optional sequence of base learning rates to tune;
            each replaces the optimizer's learning rate (or schedule).
        rho_schedule: Optional sequence of schedule names, the values of
            the "rho_schedule" choice: names of `keras_sam.schedules.by_name`
            ("constant", "step_decay", "exp_decay", "step_increase",
            "cosine"), applied per epoch from the trial's rho by
            `keras_sam.callbacks.RhoScheduler`. Or a mapping from names to
            `factory(rho)` returning any schedule `epoch -> rho`. Not tuned
            if None.
        p: Optional float > 1 or inf, the perturbation norm, instead of
            the model's (a `SAMModel`'s) or SAM's default 2.
        seed: Optional integer; if given, each trial calls
            `keras.utils.set_random_seed(seed)` before building, so that
            trials differ only by their hyperparameters.
        name: Optional string, the hypermodel's name.
        **compile_kwargs: Other arguments of `Model.compile`, instead of
            the model's.

    Example:

    >>> import keras, keras_tuner
    >>> def build():
    ...     model = keras.Sequential([keras.Input((4,)),
    ...         keras.layers.Dense(3, activation="softmax")])
    ...     model.compile(optimizer=keras.optimizers.Adam(0.003),
    ...         loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ...     return model
    >>> hypermodel = SAMHyperModel(build, rho=[0.05, 0.1])
    >>> model = hypermodel.build(keras_tuner.HyperParameters())
    >>> round(float(model.rho.numpy()), 6), type(model.optimizer).__name__
    (0.05, 'Adam')

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021: section 3.1 (grid search on a
        10% validation split), appendix C.1 (clean validation set).
        Alexandru, "Sharpness-aware minimisation and label noise",
        section 7 (Bayesian optimisation of rho; rho schedules).
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(_tunable_class(cls))

    def __init__(
        self,
        build_model: Optional[Callable] = None,
        *,
        model: Optional[keras.Model] = None,
        input_shape: Optional[tuple] = None,
        optimizer: Any = None,
        loss: Any = None,
        metrics: Optional[Sequence] = None,
        rho: Optional[Sequence[float]] = None,
        rho_range: Optional[tuple] = None,
        m: Optional[Sequence[int]] = None,
        learning_rate: Optional[Sequence[float]] = None,
        rho_schedule: Optional[dict] = None,
        p: Optional[float] = None,
        seed: Optional[int] = None,
        name: Optional[str] = None,
        **compile_kwargs,
    ):
        super().__init__(name=name)
        if isinstance(build_model, keras.Model) and model is None:
            build_model, model = None, build_model
        self._check_source(build_model, model)
        self._set_space(rho, rho_range, m, learning_rate, rho_schedule)
        self.build_model = build_model
        self.model = model
        self.input_shape = input_shape
        given = dict(optimizer=optimizer, loss=loss, metrics=metrics)
        given.update(compile_kwargs)
        self.compile_overrides = {
            key: value for key, value in given.items() if value is not None
        }
        self.p = p
        self.seed = seed

    @staticmethod
    def _check_source(build_model, model):
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

    def _set_space(self, rho, rho_range, m, learning_rate, rho_schedule):
        """Checks and keeps the values of the hyperparameters."""
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
            self.learning_rates = space.check_learning_rates(learning_rate)
        self.rho_schedule = None
        if rho_schedule is not None:
            self.rho_schedule = self._check_schedules(rho_schedule)
    @staticmethod
    def _check_m_values(m_values) -> tuple:
        values = tuple(m_values)
        if not values:
            raise ValueError(
                "`m` must be a non-empty sequence of integers >= 1, or None "
                f"not to tune m. Received: m={m_values!r}"
            )
        return tuple(check_m(v) for v in values)

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
        """The trial's model before SAM, and the model it copies.

        Returns:
            `(model, source)`: a freshly built model (then `source` is the
            same model) or a fresh clone of `self.model` (then `source` is
            `self.model`), whose compile and SAM setup the trial keeps.
        """
        if self.build_model is None:
            return trials.plain_clone(self.model), self.model
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
        return built, built

    def _sam_model(self, model, source, values: dict):
        """`model` as a `SAMModel` with the trial's rho and m.

        Every SAM option of `source` (if a `SAMModel`) is kept; `p` (if
        given) and the trial's "m" replace theirs.
        """
        options = {}
        if isinstance(source, model_module.SAMModel):
            options = trials.sam_config(source)
            del options["rho"]
        if self.p is not None:
            options["p"] = self.p
        if "m" in values:
            options["m"] = check_m(values["m"])
        rho = model_module.check_rho(values["rho"])
        if isinstance(model, model_module.SAMModel):
            current = trials.sam_config(model)
            if all(current[k] == v for k, v in options.items()):
                model.rho.assign(rho)  # already the trial's SAM: keep it
                return model
            model = self._rewrappable(model, options)
        return model_module.SAMModel.from_model(
            model, input_shape=self.input_shape, rho=rho, **options
        )

    @staticmethod
    def _rewrappable(model, options: dict):
        """The plain graph of a built `SAMModel` whose options must change."""
        plain = trials.plain_graph(model)
        if plain is model:
            raise ValueError(
                f"`build_model` returned {model.name!r}, a SAMModel without "
                "a functional graph, so the trial cannot rebuild it with "
                f"{options}. Read the trial's values in `build_model` "
                "instead (e.g. `SAMModel(..., m=hp.get('m'))`), or return "
                "a functional or Sequential model."
            )
        return plain

    def build(self, hp):
        """Builds, wraps and compiles the model of one trial.

        Args:
            hp: The trial's `keras_tuner.HyperParameters`.

        Returns:
            A compiled `SAMModel` with the trial's hyperparameters.
        """
        values = self.declare(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        model, source = self._base_model(hp)
        arguments = trials.compile_arguments(source) or {}
        arguments.update(self.compile_overrides)
        model = self._sam_model(model, source, values)
        model.compile(
            **trials.fresh_compile_kwargs(
                arguments, values.get("learning_rate")
            )
        )
        return model

    def fit(self, hp, model, *args, **kwargs):
        """Trains one trial, with its rho schedule when one is tuned.

        Args:
            hp: The trial's `keras_tuner.HyperParameters`.
            model: The model `build` returned.
            *args: Positional arguments of `Model.fit`.
            **kwargs: Keyword arguments of `Model.fit`.

        Returns:
            The `History` of `model.fit`.
        """
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
