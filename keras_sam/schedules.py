"""rho as a function of training progress.

A schedule maps the current epoch (or step) `t` to a neighbourhood size:

    Constant          rho_t = rho
    StepDecay         rho_0 until 30% of training, x0.1 until 60%, x0.01 after
    StepIncrease      the same boundaries, x10 at each
    ExponentialDecay  rho_t = rho_0 * exp(-k t)
    CosineDecay       rho_0 -> alpha * rho_0 along half a cosine

Schedules are small serialisable classes; any Python callable `t -> rho`
works as well. `keras_sam.callbacks.RhoScheduler` calls the schedule and
assigns `model.rho` between steps, so nothing is retraced. Schedules that
depend on the length of training take `total` (in the unit of `t`); when it
is left to None, `RhoScheduler` fills it in from `fit`'s epochs and steps.
"""

import math
from typing import Optional, Sequence

import keras

from keras_sam.core.options import check_rho

_PACKAGE = "keras_sam"


def _check_rho(name: str, value) -> float:
    """`keras_sam.core.options.check_rho`, its error naming the argument `name`."""
    try:
        return check_rho(value)
    except ValueError as error:
        raise ValueError(f"`{name}`: {error}") from None


def check_total(total) -> Optional[int]:
    """Validates a schedule's number of steps or epochs (None: unknown)."""
    if total is None:
        return None
    try:
        valid = not isinstance(total, bool) and int(total) == total > 0
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise ValueError(
            "`total` must be a positive integer, the length of training in "
            "epochs (or steps), or None to let `RhoScheduler` set it. "
            f"Received: total={total!r}"
        )
    return int(total)


def _check_positive(name: str, value, fix: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(
            f"`{name}` must be a finite number > 0 ({fix}). "
            f"Received: {name}={value!r}"
        )
    return number


class RhoSchedule:
    """Base class of rho schedules: `schedule(t)` returns a float rho.

    Subclasses implement `rho_at(t)` and `get_config()`; schedules whose
    value depends on the length of training take a `total` argument.
    """

    total: Optional[int] = None
    needs_total = False

    def __call__(self, step_or_epoch) -> float:
        t = float(step_or_epoch)
        if not math.isfinite(t) or t < 0:
            raise ValueError(
                "A rho schedule is called with the epoch or step index, a "
                f"number >= 0. Received: {step_or_epoch!r}"
            )
        if self.needs_total and self.total is None:
            raise ValueError(
                f"{type(self).__name__} needs the length of training: pass "
                "`total=` (epochs or steps), or use it through "
                "`keras_sam.callbacks.RhoScheduler`, which sets it."
            )
        return float(self.rho_at(t))

    def rho_at(self, t: float) -> float:
        raise NotImplementedError

    def with_total(self, total: int) -> "RhoSchedule":
        """A copy of this schedule for a run of `total` epochs (or steps)."""
        config = self.get_config()
        if "total" in config:
            config["total"] = total
        return type(self).from_config(config)

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict) -> "RhoSchedule":
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Constant(RhoSchedule):
    """A constant rho.

    Args:
        rho: Float >= 0, the neighbourhood size at every step.

    >>> Constant(0.05)(17)
    0.05

    References:
        Foret et al. 2021, section 3 (a fixed rho throughout training).
    """

    def __init__(self, rho: float):
        self.rho = _check_rho("rho", rho)

    def rho_at(self, t: float) -> float:
        return self.rho

    def get_config(self) -> dict:
        return {"rho": self.rho}


class _Piecewise(RhoSchedule):
    """rho_0 * factor**i in the i-th interval between `boundaries`."""

    needs_total = True

    def __init__(
        self,
        initial_rho: float,
        total: Optional[int] = None,
        boundaries: Sequence[float] = (0.3, 0.6),
        factor: float = 0.1,
    ):
        self.initial_rho = _check_rho("initial_rho", initial_rho)
        self.total = check_total(total)
        self.factor = _check_positive(
            "factor", factor, "the multiplier applied at each boundary"
        )
        try:
            bounds = tuple(float(b) for b in boundaries)
        except (TypeError, ValueError):
            bounds = (float("nan"),)
        if (
            not bounds
            or not all(0.0 < b < 1.0 for b in bounds)
            or any(a >= b for a, b in zip(bounds, bounds[1:]))
        ):
            raise ValueError(
                "`boundaries` must be increasing fractions of training in "
                "(0, 1), e.g. (0.3, 0.6). Received: "
                f"boundaries={boundaries!r}"
            )
        self.boundaries = bounds

    def rho_at(self, t: float) -> float:
        progress = t / self.total
        passed = sum(1 for b in self.boundaries if progress >= b)
        return self.initial_rho * self.factor**passed

    def get_config(self) -> dict:
        return {
            "initial_rho": self.initial_rho,
            "total": self.total,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StepDecay(_Piecewise):
    """rho_0 for the first 30% of training, x0.1 until 60%, x0.01 after.

    At `t`, rho = initial_rho * factor**i, where i counts the boundaries
    with `t / total >= boundary`.

    Args:
        initial_rho: Float >= 0, rho at the start of training.
        total: Positive integer, the length of training in the unit of `t`
            (epochs or steps), or None to let `RhoScheduler` set it.
        boundaries: Increasing fractions of training in (0, 1) at which rho
            is multiplied by `factor`. Defaults to (0.3, 0.6).
        factor: Float > 0, the multiplier at each boundary. Defaults to 0.1.

    >>> schedule = StepDecay(0.1, total=10)
    >>> [round(schedule(t), 6) for t in (0, 2, 3, 5, 6, 9)]
    [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]

    References:
        Alexandru, "Sharpness-aware minimisation and label noise",
        section 4.3 (step decay).
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StepIncrease(_Piecewise):
    """rho_0 for the first 30% of training, x10 until 60%, x100 after.

    Args:
        initial_rho: Float >= 0, rho at the start of training.
        total: Positive integer, the length of training in the unit of `t`,
            or None to let `RhoScheduler` set it.
        boundaries: Increasing fractions of training in (0, 1). Defaults to
            (0.3, 0.6).
        factor: Float > 0, the multiplier at each boundary. Defaults to 10.

    >>> schedule = StepIncrease(0.001, total=10)
    >>> [round(schedule(t), 6) for t in (0, 3, 6)]
    [0.001, 0.01, 0.1]

    References:
        Alexandru, "Sharpness-aware minimisation and label noise",
        section 4.3 (step increase).
    """

    def __init__(self, initial_rho: float, total: Optional[int] = None,
                 boundaries: Sequence[float] = (0.3, 0.6), factor=10.0):
        super().__init__(initial_rho, total, boundaries, factor)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExponentialDecay(RhoSchedule):
    """rho_t = rho_0 * exp(-k t), with t in epochs or steps.

    Args:
        initial_rho: Float >= 0, rho_0.
        k: Float >= 0, the decay rate per unit of `t`. Defaults to 0.1.

    >>> round(ExponentialDecay(0.1, k=0.1)(10), 6)
    0.036788

    References:
        Alexandru, "Sharpness-aware minimisation and label noise",
        section 4.3, equation 3.
    """

    def __init__(self, initial_rho: float, k: float = 0.1):
        self.initial_rho = _check_rho("initial_rho", initial_rho)
        try:
            self.k = float(k)
        except (TypeError, ValueError):
            self.k = float("nan")
        if not math.isfinite(self.k) or self.k < 0:
            raise ValueError(
                "`k` must be a finite decay rate >= 0 (0.1 in Alexandru's "
                f"experiments; 0 keeps rho constant). Received: k={k!r}"
            )

    def rho_at(self, t: float) -> float:
        return self.initial_rho * math.exp(-self.k * t)

    def get_config(self) -> dict:
        return {"initial_rho": self.initial_rho, "k": self.k}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CosineDecay(RhoSchedule):
    """Half a cosine from rho_0 at t=0 to alpha * rho_0 at t=total.

    rho_t = rho_0 * (alpha + (1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2)

    Args:
        initial_rho: Float >= 0, rho at the start of training.
        total: Positive integer T, the length of training in the unit of
            `t`, or None to let `RhoScheduler` set it.
        alpha: Float in [0, 1], the final rho as a fraction of rho_0.
            Defaults to 0.

    >>> schedule = CosineDecay(0.2, total=4)
    >>> [round(schedule(t), 6) for t in (0, 2, 4)]
    [0.2, 0.1, 0.0]

    References:
        Loshchilov and Hutter, "SGDR", ICLR 2017 (the cosine shape, applied
        to rho as Alexandru section 4.3 applies learning-rate schedules).
    """

    needs_total = True

    def __init__(
        self, initial_rho: float, total: Optional[int] = None, alpha=0.0
    ):
        self.initial_rho = _check_rho("initial_rho", initial_rho)
        self.total = check_total(total)
        try:
            self.alpha = float(alpha)
        except (TypeError, ValueError):
            self.alpha = float("nan")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                "`alpha` must be in [0, 1], the final rho as a fraction of "
                f"initial_rho. Received: alpha={alpha!r}"
            )

    def rho_at(self, t: float) -> float:
        progress = min(t, self.total) / self.total
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.initial_rho * (self.alpha + (1 - self.alpha) * cosine)

    def get_config(self) -> dict:
        return {
            "initial_rho": self.initial_rho,
            "total": self.total,
            "alpha": self.alpha,
        }


_BY_NAME = {
    "constant": Constant,
    "step_decay": StepDecay,
    "exp_decay": ExponentialDecay,
    "step_increase": StepIncrease,
    "cosine": CosineDecay,
}


def by_name(name: str, rho: float, **kwargs) -> RhoSchedule:
    """The schedule called `name`, starting at `rho`.

    Args:
        name: One of "constant", "step_decay", "exp_decay",
            "step_increase", "cosine".
        rho: Float >= 0, the initial (or constant) rho.
        **kwargs: The schedule's other arguments (`total`, `k`, ...).

    Returns:
        A `RhoSchedule`.

    >>> by_name("exp_decay", 0.1, k=0.5)
    ExponentialDecay(initial_rho=0.1, k=0.5)
    """
    if name not in _BY_NAME:
        raise ValueError(
            f"Unknown rho schedule {name!r}: use one of {sorted(_BY_NAME)}."
        )
    cls = _BY_NAME[name]
    if cls is Constant:
        return Constant(rho, **kwargs)
    return cls(rho, **kwargs)
