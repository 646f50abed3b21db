"""`RhoScheduler`: sets `model.rho` from a schedule, per epoch or per step."""


import keras
import numpy as np

from keras_sam import _keras
from keras_sam import schedules as schedules_module
from keras_sam.core.options import check_rho


def rho_variable(model, caller: str):
    """`model.rho` if it is a variable a callback can assign, else raises."""
    rho = getattr(model, "rho", None)
    if rho is None or not hasattr(rho, "assign"):
        raise ValueError(
            f"{caller} needs a model with a `rho` variable, such as a "
            f"`keras_sam.SAMModel`. Model {getattr(model, 'name', model)!r} "
            f"of type {type(model).__name__} has rho={rho!r}: build it with "
            "`keras_sam.SAMModel` (or `SAMModel.from_model(model)`)."
        )
    return rho


def check_scheduled_rho(value, t, unit: str) -> float:
    """The schedule's output as a float (`keras_sam.core.options.check_rho`)."""
    try:
        return check_rho(np.asarray(keras.ops.convert_to_numpy(value)).item())
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The rho schedule returned rho={value!r} at {unit} {t}: "
            f"{error} Fix the schedule so that it returns a non-negative "
            "float for every epoch (or step)."
        ) from None


def optimizer_step(model) -> int:
    """The number of optimizer steps taken so far: `optimizer.iterations`.

    It is saved with the weights (`save_weights`, `BackupAndRestore`), so a
    schedule indexed by it resumes where it stopped after a restart, on any
    dataset, including one of unknown cardinality.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            'RhoScheduler(per="step") reads the step from '
            "`model.optimizer.iterations`: compile the model first."
        )
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


class RhoScheduler(keras.callbacks.Callback):
    """Assigns `model.rho` from a schedule before each epoch (or step).

    `model.rho` is a non-trainable variable that the compiled train step
    reads, so a new value takes effect at the next step without retracing.
    At the end of each epoch the current rho is written to `logs["rho"]`,
    where `History`, `CSVLogger` and `TensorBoard` find it (list
    `RhoScheduler` before them in `callbacks`).

    Args:
        schedule: A `keras_sam.schedules.RhoSchedule`, or any callable that
            takes the epoch (or global step) index, counted from 0, and
            returns a float rho >= 0.
        total: Positive integer, the length of training in the unit of
            `per`, for schedules built without `total` (step decay, step
            increase, cosine). Defaults to None: `fit`'s `epochs`, or
            `epochs * steps` when `per="step"`.
        per: "epoch" (default) or "step": how often rho is updated. The
            step is `model.optimizer.iterations` (the optimizer steps taken
            so far, restored by `BackupAndRestore`), so a per-step schedule
            resumes exactly after a restart and continues across `fit`
            calls; the epoch is `fit`'s. With `steps_per_execution > 1`,
            "step" updates once per execution.
        verbose: Integer. 0: quiet, 1: print each new value.

    >>> import keras, keras_sam, numpy as np
    >>> from keras_sam import schedules
    >>> from keras_sam.callbacks import RhoScheduler
    >>> inputs = keras.Input((4,))
    >>> model = keras_sam.SAMModel(inputs, keras.layers.Dense(1)(inputs))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> callback = RhoScheduler(schedules.StepDecay(0.1), per="epoch")
    >>> history = model.fit(np.ones((8, 4)), np.zeros((8, 1)), epochs=5,
    ...                     callbacks=[callback], verbose=0)
    >>> [round(r, 6) for r in history.history["rho"]]
    [0.1, 0.1, 0.01, 0.001, 0.001]

    References:
        Alexandru, "Sharpness-aware minimisation and label noise", section
        4.3 (rho schedules); modelled on `keras.callbacks.
        LearningRateScheduler`.
    """

    def __init__(self, schedule, total=None, per="epoch", verbose=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                "`schedule` must be a `keras_sam.schedules.RhoSchedule` or a "
                "callable `t -> rho`. Received: "
                f"schedule={schedule!r} of type {type(schedule).__name__}"
            )
        if per not in ("epoch", "step"):
            raise ValueError(
                f'`per` must be "epoch" or "step". Received: per={per!r}'
            )
        self.schedule = schedule
        self.total = schedules_module.check_total(total)
        self.per = per
        self.verbose = verbose
        self._active = schedule

    def _bind_total(self):
        """The schedule with its `total` filled in, when it needs one."""
        schedule = self.schedule
        if not getattr(schedule, "needs_total", False):
            return schedule
        if schedule.total is not None:
            if self.total is not None and self.total != schedule.total:
                raise ValueError(
                    f"The schedule has total={schedule.total} but "
                    f"RhoScheduler got total={self.total}: give `total` to "
                    "only one of them."
                )
            return schedule
        total = self.total
        if total is None:
            epochs = self.params.get("epochs")
            steps = self.params.get("steps")
            total = epochs if self.per == "epoch" else None
            if self.per == "step" and epochs and steps:
                total = epochs * steps
            if not total:
                raise ValueError(
                    f"{type(schedule).__name__} needs the length of training "
                    f"in {self.per}s, which fit() does not know here (steps="
                    f"{steps}): pass RhoScheduler(..., total=...)."
                )
        return schedule.with_total(total)

    def on_train_begin(self, logs=None):
        rho_variable(self.model, "RhoScheduler")
        self._active = self._bind_total()

    def _set(self, t):
        rho = check_scheduled_rho(self._active(t), t, self.per)
        self.model.rho.assign(rho)
        if self.verbose > 0:
            _keras.print_msg(
                f"\n{self.per.capitalize()} {t}: RhoScheduler setting rho to "
                f"{rho:.6g}."
            )
        return rho

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            self._set(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "step":
            self._set(optimizer_step(self.model))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["rho"] = float(keras.ops.convert_to_numpy(self.model.rho))
