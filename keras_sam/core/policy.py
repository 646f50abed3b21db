"""When a SAM step takes a fresh ascent gradient, and what it keeps.

The cheap SAMs are one mechanism: a policy that decides, per step and
replica, whether the step runs SAM (two passes) or one pass, and the state
some of them keep between steps:

- `sam_every=k`: SAM on every k-th step (`optimizer.iterations`, the same
  on every replica).
- `sam_from`: late-phase SAM, no SAM before a step (Zhou et al. 2024).
- `trigger="adaptive"`: AE-SAM (Jiang et al. 2023), SAM when ||g||^2 is
  large against its moving mean and variance, kept per replica.
- `off_step="looksam"`: LookSAM (Liu et al. 2022) between SAM steps,
  reusing the stored orthogonal part g_v of the last SAM gradient, kept
  per replica.
- a kept Sparse SAM mask (`mask_update_every > 1`), per replica.

The state lives in `StepState`: `keras.Variable`s created here, held by a
plain object (never tracked by the model, so never in `model.weights` or
checkpoints) and synchronised on read, so each replica of a
`tf.distribute` strategy reads and writes its own copy.
"""

import keras
import numpy as np
from keras import ops

from keras_sam import _keras
from keras_sam.core import step


class StepState:
    """Per-replica state of the policy, created outside the step.

    Args:
        model: The built, compiled model (its optimizer built too).
        options: Its `SAMOptions`.

    Raises:
        ValueError: `perturbation="momentum"` with an optimizer that keeps
            no momentum.
    """

    def __init__(self, model, options):
        self.options = options
        self.trigger_stats = None
        self.direction = None
        self.mask = None
        self.momentum = None
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        with _keras.strategy_scope(model):
            if options.trigger == "adaptive":
                self.trigger_stats = [_variable((), "ae_sam_" + n)
                                      for n in ("mean", "variance")]
            if options.off_step == "looksam":
                self.direction = [_variable(s, "looksam_g_v") for s in shapes]
            kept = options.perturbed_fraction < 1 and options.m is None
            if kept and options.mask_update_every > 1:
                self.mask = [_variable(s, "sparse_sam_mask") for s in shapes]
        if options.perturbation == "momentum":
            self.momentum = momentum_slots(model)


def check_state(options, step_state):
    """Refuses to run options that keep state without their state."""
    needs = (
        options.trigger == "adaptive"
        or options.off_step == "looksam"
        or options.perturbation == "momentum"
        or (options.perturbed_fraction < 1 and options.mask_update_every > 1
            and options.m is None)
    )
    if needs and step_state is None:
        raise ValueError(
            "These SAM options keep state between steps; pass "
            "`step_state=keras_sam.core.policy.StepState(model, options)` "
            "(SAMModel does this when it makes its train function)."
        )


def _variable(shape, name):
    return keras.Variable(
        np.zeros(shape, "float32"),
        trainable=False,
        synchronization="on_read",
        aggregation="mean",
        name=name,
    )


def momentum_slots(model):
    """The optimizer's momentum variables and the sign that makes them v.

    Keras' SGD keeps m = mu m - lr g (so v, the sum of gradients, is -m /
    lr); Adam-like optimizers keep a moving mean of g (v itself).

    Returns:
        `(slots, sign)`, slots aligned with `model.trainable_variables`.
    """
    optimizer = model.optimizer
    if not optimizer.built:  # Keras builds it in the first step otherwise
        with _keras.strategy_scope(model):
            optimizer.build(model.trainable_variables)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    slots = _keras.optimizer_momentums(inner)
    sign = -1.0 if isinstance(inner, keras.optimizers.SGD) else 1.0
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    if not slots or [tuple(s.shape) for s in slots] != shapes:
        raise ValueError(
            "perturbation='momentum' (Momentum-SAM) perturbs along the base "
            "optimizer's momentum, but "
            f"{type(inner).__name__}({_momentum_config(inner)}) keeps none "
            "for these weights. Compile with e.g. keras.optimizers.SGD("
            "learning_rate, momentum=0.9) or Adam/AdamW, or use "
            "perturbation='gradient'."
        )
    return slots, sign


def _momentum_config(optimizer) -> str:
    momentum = getattr(optimizer, "momentum", None)
    return "" if momentum is None else f"momentum={momentum}"


def momentum_direction(state) -> list:
    """Momentum-SAM's v (gradient-like) from the optimizer's slots."""
    slots, sign = state.momentum
    return [sign * ops.cast(s.value, "float32") for s in slots]


def start_step(options) -> int:
    """The first step of late-phase SAM (`sam_from`, int or fraction)."""
    if isinstance(options.sam_from, float):
        return int(round(options.sam_from * options.total_steps))
    return int(options.sam_from)


def use_sam(options, rho, iterations, state=None, grad_norm=None):
    """Whether this step (on this replica) takes a fresh ascent gradient.

    Args:
        options: The `SAMOptions`.
        rho: The radius; a step with rho == 0 never runs SAM.
        iterations: The optimizer's step counter.
        state: The `StepState` (AE-SAM's statistics).
        grad_norm: ||g|| of the unscaled local gradient at w (AE-SAM only).
    """
    iterations = ops.convert_to_tensor(iterations)
    decision = ops.cast(rho, "float32") > 0
    if options.sam_every > 1:
        decision = ops.logical_and(
            decision, ops.equal(iterations % options.sam_every, 0)
        )
    start = start_step(options)
    if start > 0:
        decision = ops.logical_and(decision, iterations >= start)
    if options.trigger == "adaptive":
        decision = ops.logical_and(
            decision, ae_sam_trigger(options, state, grad_norm, iterations)
        )
    return decision


def rho_decides_alone(options) -> bool:
    """Whether `use_sam` is just `rho > 0`: no `sam_every`, late start or
    adaptive trigger."""
    return (options.sam_every == 1 and start_step(options) == 0
            and options.trigger == "always")


def ae_sam_trigger(options, state, grad_norm, iterations):
    """AE-SAM: updates the moving mean and variance of ||g||^2, then SAM
    if ||g||^2 >= mu_t + c_t sigma_t.

    References:
        Jiang et al., "An Adaptive Policy to Employ Sharpness-Aware
        Minimization", ICLR 2023, Algorithm 1 (mu_t, sigma_t^2 with decay
        delta; c_t linear from lambda_1 to lambda_2 over T steps).
    """
    mean_var, variance_var = state.trigger_stats
    delta = options.trigger_decay
    x = ops.square(ops.cast(grad_norm, "float32"))
    mean = delta * mean_var.value + (1 - delta) * x
    variance = delta * variance_var.value + (1 - delta) * ops.square(x - mean)
    mean_var.assign(mean)
    variance_var.assign(variance)
    c = ops.convert_to_tensor(options.trigger_c, "float32")
    if options.trigger_c_end is not None:
        progress = ops.minimum(
            ops.cast(iterations, "float32") / options.total_steps, 1.0
        )
        c = c + (options.trigger_c_end - options.trigger_c) * progress
    return x >= mean + c * ops.sqrt(variance)


def kept_mask(options, state, grads, weights, normal, iterations, cond):
    """The Sparse SAM mask kept in `state`, recomputed every
    `mask_update_every` steps; None when it is not kept.

    `cond(predicate, true_fn, false_fn)` is the backend's conditional.
    """
    if state is None or state.mask is None:
        return None

    def fresh():
        mask = step.compute_mask(grads, weights, options, normal)
        for variable, value in zip(state.mask, mask):
            variable.assign(value)
        return mask

    def kept():
        return [v.value for v in state.mask]

    due = ops.equal(
        ops.convert_to_tensor(iterations) % options.mask_update_every, 0
    )
    return [ops.stop_gradient(m) for m in cond(due, fresh, kept)]


def store_looksam_direction(state, grads, sam_grads):
    """After a SAM step: keeps g_v, the orthogonal part of g_sam."""
    if state is None or state.direction is None:
        return
    for variable, value in zip(
        state.direction, step.looksam_direction(grads, sam_grads)
    ):
        variable.assign(value)


def off_step_gradient(options, state, grads, rho):
    """The descent gradient of a step without a fresh ascent gradient:
    g, or LookSAM's g + alpha ||g||/||g_v|| g_v while rho > 0."""
    if state is None or state.direction is None:
        return grads
    alpha = ops.where(
        ops.cast(rho, "float32") > 0, options.looksam_alpha, 0.0
    )
    direction = [v.value for v in state.direction]
    return step.looksam_gradient(grads, direction, alpha)
