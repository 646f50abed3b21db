"""The settings of SAM's step, validated once, at construction.

Every variant the papers study is a setting of one mechanism (see
`SAMModel`): where the perturbation comes from, which geometry bounds it,
how many ascent steps find it, and how the descent gradient is formed.
"""

import dataclasses
import math
import numbers
from typing import Optional

from keras_sam import perturbation
from keras_sam import sharding

PERTURBATIONS = ("gradient", "random")
GRADIENT_RULES = ("sam", "logit", "jacobian")
MASKS = ("fisher", "random")


@dataclasses.dataclass(frozen=True)
class SAMOptions:
    """Options of the SAM step (all but rho, which is a variable).

    Attributes:
        m: Examples per perturbation group, or None for the replica batch.
        p: Norm of the perturbation ball (eq. 2), > 1 or inf.
        perturbation: "gradient" (SAM) or "random" (eps = rho z / ||z||,
            z ~ N(0, I); Foret et al. appendix C.5).
        adaptive: ASAM: the ball is ||T_w^-1 eps||_p <= rho with
            T_w = |w| + eta on kernels (Kwon et al. 2021).
        eta: ASAM's offset, >= 0.
        adapt_normalization: ASAM also adapts normalisation scales
            (`gamma`), as the official code does (it adapts every PyTorch
            parameter named "weight"); False adapts kernels only.
        ascent_steps: Projected-gradient ascent steps (appendix C.6); with
            p = inf this is multi-step FGSM.
        second_order: Differentiate through eps(w) (appendix C.4).
        gradient_rule: "sam" (gradient at w + eps), "logit" (L-SAM, Baek et
            al. eq. 2.8) or "jacobian" (J-SAM, eq. 2.9).
        perturbed_fraction: Sparse SAM: the fraction of weights perturbed,
            in (0, 1]; 1 is dense SAM (SSAM's sparsity is 1 - this).
        mask: Sparse SAM's mask: "fisher" (largest squared gradients of the
            batch, recomputed every step) or "random" (uniform).
        mask_update_every: Steps between random-mask refreshes, >= 1.
        sam_every: A cheap SAM: the SAM step on every `sam_every`-th step
            only and the base optimizer's single pass in between, for an
            average cost of 1 + 1/sam_every passes; 1 is SAM.
        seed: Integer seed of random perturbations and masks.
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
    seed: int = 0
    sync_moving_statistics: bool = False

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("m", sharding.check_m(self.m))
        set_("p", perturbation.check_p(self.p))
        _check_choice("perturbation", self.perturbation, PERTURBATIONS)
        _check_choice("gradient_rule", self.gradient_rule, GRADIENT_RULES)
        _check_choice("mask", self.mask, MASKS)
        for name in (
            "adaptive",
            "second_order",
            "adapt_normalization",
            "sync_moving_statistics",
        ):
            _check_bool(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(
            self.seed, numbers.Integral
        ):
            raise ValueError(
                "`seed` must be an integer (the seed of random perturbations "
                f"and masks). Received: seed={self.seed!r}"
            )
        if not (
            isinstance(self.eta, numbers.Real)
            and not isinstance(self.eta, bool)
            and self.eta >= 0
        ):
            raise ValueError(
                "`eta` (ASAM's offset) must be a number >= 0, e.g. 0.01. "
                f"Received: eta={self.eta!r}"
            )
        set_("eta", float(self.eta))
        for name in ("ascent_steps", "mask_update_every", "sam_every"):
            _check_positive_int(name, getattr(self, name))
        fraction = self.perturbed_fraction
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError(
                "`perturbed_fraction` must be in (0, 1]: the share of weights "
                "that Sparse SAM perturbs (1 = dense SAM). Received: "
                f"perturbed_fraction={fraction!r}"
            )
        self._check_combinations()

    def _check_combinations(self):
        if self.ascent_steps > 1 and not (self.p == 2.0 or math.isinf(self.p)):
            raise ValueError(
                f"ascent_steps={self.ascent_steps} projects onto the p-ball, "
                f"which is implemented for p=2 and p=inf. Received: p={self.p}"
            )
        exclusive = {
            "second_order=True": self.second_order,
            f"gradient_rule={self.gradient_rule!r}": self.gradient_rule != "sam",
            f"ascent_steps={self.ascent_steps}": self.ascent_steps > 1,
        }
        chosen = [name for name, on in exclusive.items() if on]
        if len(chosen) > 1:
            raise ValueError(
                f"{' and '.join(chosen)} cannot be combined: choose one of "
                "second-order SAM, L-SAM/J-SAM or multi-step ascent."
            )
        if self.perturbation == "random" and chosen:
            raise ValueError(
                f"perturbation='random' does not use the gradient, so it "
                f"cannot be combined with {chosen[0]}."
            )

    def get_config(self) -> dict:
        return dataclasses.asdict(self)


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


def _check_positive_int(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
        )
