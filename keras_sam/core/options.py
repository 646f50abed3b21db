"""The settings of SAM's step, validated once, at construction.

Every variant the papers study is a setting of one mechanism (see
`SAMModel`): where the perturbation comes from, which geometry bounds it,
how many ascent steps find it, how the descent gradient is formed, and a
*policy* that decides, per step, whether to take a fresh ascent gradient
at all (the cheap SAMs). A combination that the step cannot honour is
refused here, with the reason.
"""

import dataclasses
import math
import numbers
from typing import Optional

import numpy as np

from keras_sam.core import perturbation

def check_m(m: Optional[int]) -> Optional[int]:
    """Validates the group size `m` (None means the whole replica batch)."""
    if m is None:
        return None
    if (
        isinstance(m, bool)
        or not isinstance(m, numbers.Integral)
        or m < 1
    ):
        raise ValueError(
            "`m` must be a positive integer (examples per perturbation "
            f"group) or None for the whole per-replica batch. Received: m={m!r}"
        )
    return int(m)


def check_rho(rho) -> float:
    """Validates the neighbourhood size `rho` and returns it as a float."""
    if isinstance(rho, (bool, np.bool_)):
        raise ValueError(
            "`rho` must be a number >= 0, not a boolean (e.g. rho=0.05). "
            f"Received: rho={rho!r}"
        )
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise ValueError(
            f"`rho` must be a non-negative number. Received: rho={rho!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            "`rho` must be a finite number >= 0 (0 gives the base "
            f"optimizer; Foret et al. use 0.01-0.5). Received: rho={rho!r}"
        )
    return value


PERTURBATIONS = ("gradient", "random", "momentum")
GRADIENT_RULES = ("sam", "logit", "jacobian")
MASKS = ("fisher", "random")
TRIGGERS = ("always", "adaptive")
OFF_STEPS = ("base", "looksam")


@dataclasses.dataclass(frozen=True)
class SAMOptions:
    """Options of the SAM step (all but rho, which is a variable).

    Attributes:
        m: Examples per perturbation group, or None for the replica batch.
        p: Norm of the perturbation ball (eq. 2), > 1 or inf.
        perturbation: Where eps points. "gradient" (SAM); "random" (a
            Gaussian direction z ~ N(0, I) through the same pipeline, so
            rho z/||z||_2 by default; Foret et al. appendix C.5);
            "momentum" (Momentum-SAM: minus the base optimizer's momentum,
            eps = -rho v/||v||, Becker et al. 2024). "random" and
            "momentum" need no ascent gradient: a step is a forward pass
            at w (the logged loss and metrics) and one gradient at w + eps.
        adaptive: ASAM: the ball is ||T_w^-1 eps||_p <= rho with
            T_w = |w| + eta on kernels (Kwon et al. 2021).
        eta: ASAM's offset, >= 0.
        adapt_normalization: ASAM also adapts normalisation scales
            (`gamma`), as the official code does (it adapts every PyTorch
            parameter named "weight"); False adapts kernels only.
        ascent_steps: Projected-gradient ascent steps (appendix C.6); with
            p = inf this is multi-step FGSM.
        second_order: Differentiate through eps(w) (appendix C.4), through
            the whole pipeline (ASAM's T_w, the mask, the dual vector).
        gradient_rule: "sam" (gradient at w + eps), "logit" (L-SAM, Baek et
            al. eq. 2.8) or "jacobian" (J-SAM, eq. 2.9).
        perturbed_fraction: Sparse SAM: the fraction of weights perturbed,
            in (0, 1]; 1 is dense SAM (SSAM's sparsity is 1 - this).
        mask: Sparse SAM's mask: "fisher" (largest squared gradients of the
            batch, a diagonal empirical Fisher) or "random" (uniform).
        mask_update_every: Steps between mask updates, >= 1. Without `m`
            the mask is kept per replica between updates (Mi et al.
            recompute it every T_m iterations).
        sam_every: Policy: a fresh ascent gradient on every
            `sam_every`-th step only; in between one pass (the base
            optimizer's gradient, or LookSAM's, see `off_step`).
        sam_from: Policy, late-phase SAM (Zhou et al. 2024): no SAM before
            this step. An int is a step index; a float in (0, 1) a
            fraction of `total_steps`.
        total_steps: The number of training steps, for a fractional
            `sam_from` and a scheduled `trigger_c_end`.
        trigger: Policy: "always", or "adaptive" (AE-SAM, Jiang et al.
            2023): SAM only when ||g||^2 >= mu + c sigma, with mu and
            sigma^2 exponential moving averages of ||g||^2 (per replica).
        trigger_decay: AE-SAM's delta, the moving averages' decay in [0, 1).
        trigger_c: AE-SAM's threshold c (at step 0 when scheduled).
        trigger_c_end: If set, c moves linearly from `trigger_c` to this
            over `total_steps` (AE-SAM's lambda_1 -> lambda_2 schedule).
        off_step: What a step without a fresh ascent gradient descends
            along: "base" (the plain gradient) or "looksam" (LookSAM, Liu
            et al. 2022: g + alpha ||g||/||g_v|| g_v with g_v the part of
            the last SAM gradient orthogonal to its g, kept per replica).
        looksam_alpha: LookSAM's alpha, >= 0 (0 is `off_step="base"`).
        seed: Integer seed of random perturbations and masks.
        log_statistics: Whether the training logs (History, callbacks,
            CSV) hold SAM's `rho`, `grad_norm` and `sharpness`; False
            gives exactly keras.Model's log keys (`model.sam_logs()`
            still has the values).
        sync_moving_statistics: Under a distribution strategy, average
            BatchNormalization moving statistics across replicas after each
            step (as SyncBatchNorm users expect). Off by default, as in
            Keras, where each replica keeps its own (and the checkpoint the
            first replica's).
    """

    m: Optional[int] = None
    p: float = 2.0
    perturbation: str = "gradient"
    adaptive: bool = False
    eta: float = 0.01
    adapt_normalization: bool = True
    ascent_steps: int = 1
    second_order: bool = False
    gradient_rule: str = "sam"
    perturbed_fraction: float = 1.0
    mask: str = "fisher"
    mask_update_every: int = 1
    sam_every: int = 1
    sam_from: float = 0
    total_steps: Optional[int] = None
    trigger: str = "always"
    trigger_decay: float = 0.9
    trigger_c: float = 0.0
    trigger_c_end: Optional[float] = None
    off_step: str = "base"
    looksam_alpha: float = 0.7
    seed: int = 0
    sync_moving_statistics: bool = False
    log_statistics: bool = True

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("m", check_m(self.m))
        set_("p", perturbation.check_p(self.p))
        for name, choices in (
            ("perturbation", PERTURBATIONS),
            ("gradient_rule", GRADIENT_RULES),
            ("mask", MASKS),
            ("trigger", TRIGGERS),
            ("off_step", OFF_STEPS),
        ):
            _check_choice(name, getattr(self, name), choices)
        for name in (
            "adaptive",
            "second_order",
            "adapt_normalization",
            "sync_moving_statistics",
            "log_statistics",
        ):
            _check_bool(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(
            self.seed, numbers.Integral
        ):
            raise ValueError(
                "`seed` must be an integer (the seed of random perturbations "
                f"and masks). Received: seed={self.seed!r}"
            )
        for name, hint in (("eta", "ASAM's offset, e.g. 0.01"),
                           ("looksam_alpha", "LookSAM's alpha, e.g. 0.7")):
            set_(name, _check_number(name, getattr(self, name), hint))
        for name in ("ascent_steps", "mask_update_every", "sam_every"):
            _check_positive_int(name, getattr(self, name))
        fraction = self.perturbed_fraction
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError(
                "`perturbed_fraction` must be in (0, 1]: the share of weights "
                "that Sparse SAM perturbs (1 = dense SAM). Received: "
                f"perturbed_fraction={fraction!r}"
            )
        self._check_policy()
        self._check_combinations()

    def _check_policy(self):
        if self.total_steps is not None:
            _check_positive_int("total_steps", self.total_steps)
        start = self.sam_from
        fractional = isinstance(start, float) and 0 < start < 1
        if isinstance(start, bool) or not (
            fractional or (isinstance(start, numbers.Integral) and start >= 0)
        ):
            raise ValueError(
                "`sam_from` must be a step index (an int >= 0) or a fraction "
                "of `total_steps` (a float in (0, 1)), e.g. sam_from=0.5 "
                f"with total_steps=epochs * steps_per_epoch. Received: "
                f"sam_from={start!r}"
            )
        decay = self.trigger_decay
        if not (isinstance(decay, (int, float)) and 0 <= decay < 1):
            raise ValueError(
                "`trigger_decay` (AE-SAM's delta) must be in [0, 1), e.g. "
                f"0.9. Received: trigger_decay={decay!r}"
            )
        for name in ("trigger_c", "trigger_c_end"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, (int, float)) and math.isfinite(value)
            ):
                raise ValueError(
                    f"`{name}` (AE-SAM's threshold) must be a finite "
                    f"number. Received: {name}={value!r}"
                )
        needs_total = {
            f"sam_from={start!r}": fractional,
            f"trigger_c_end={self.trigger_c_end!r}":
                self.trigger_c_end is not None,
        }
        for name, needed in needs_total.items():
            if needed and self.total_steps is None:
                raise ValueError(
                    f"{name} is a fraction of training or a schedule over "
                    "it: also pass total_steps=epochs * steps_per_epoch."
                )

    def _check_combinations(self):
        if self.ascent_steps > 1 and not (self.p == 2.0 or math.isinf(self.p)):
            raise ValueError(
                f"ascent_steps={self.ascent_steps} projects onto the p-ball, "
                f"which is implemented for p=2 and p=inf. Received: p={self.p}"
            )
        exclusive = {
            "second_order=True": self.second_order,
            f"gradient_rule={self.gradient_rule!r}":
                self.gradient_rule != "sam",
            f"ascent_steps={self.ascent_steps}": self.ascent_steps > 1,
        }
        chosen = [name for name, on in exclusive.items() if on]
        if len(chosen) > 1:
            raise ValueError(
                f"{' and '.join(chosen)} cannot be combined: choose one of "
                "second-order SAM, L-SAM/J-SAM or multi-step ascent."
            )
        for name, reason in _refusals(self):
            raise ValueError(f"{name} cannot be combined with {reason}")

    def get_config(self) -> dict:
        return dataclasses.asdict(self)


def _refusals(o):
    """(setting, reason) for each combination the step cannot honour."""
    gradient_free = o.perturbation != "gradient"
    refused = []
    uses_gradient = {
        "second_order=True": o.second_order,
        f"gradient_rule={o.gradient_rule!r}": o.gradient_rule != "sam",
        f"ascent_steps={o.ascent_steps}": o.ascent_steps > 1,
        "mask='fisher'": o.mask == "fisher" and o.perturbed_fraction < 1,
        "trigger='adaptive'": o.trigger == "adaptive",
        "off_step='looksam'": o.off_step == "looksam",
    }
    for name, on in uses_gradient.items():
        if gradient_free and on:
            refused.append((
                f"perturbation={o.perturbation!r}",
                f"{name}: it needs the gradient at w, which a "
                f"{o.perturbation} perturbation does not compute (that is "
                "what makes it cheap). Use perturbation='gradient'"
                + (", or mask='random'." if "mask" in name else "."),
            ))
    per_replica = {
        "perturbation='momentum'": (
            o.perturbation == "momentum",
            "the momentum is the same for every group, so m changes "
            "nothing; leave m=None",
        ),
        "trigger='adaptive'": (
            o.trigger == "adaptive",
            "the trigger decides per replica batch, not per group",
        ),
        "off_step='looksam'": (
            o.off_step == "looksam",
            "LookSAM keeps one stored direction per replica, not per group",
        ),
        f"mask_update_every={o.mask_update_every} with mask='fisher'": (
            o.mask == "fisher" and o.perturbed_fraction < 1
            and o.mask_update_every > 1,
            "a kept mask is per replica, not per group; use "
            "mask_update_every=1 or mask='random'",
        ),
    }
    for name, (on, reason) in per_replica.items():
        if on and o.m is not None:
            refused.append((name, f"m={o.m}: {reason}."))
    return refused


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )


def _check_number(name, value, hint) -> float:
    if not (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and value >= 0
    ):
        raise ValueError(
            f"`{name}` ({hint}) must be a number >= 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _check_positive_int(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
        )
