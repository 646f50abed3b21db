"""One SAM step on one group of examples (Foret et al. 2021, Algorithm 1).

    first  = evaluate(w, batch)                 # loss, g = grad L_B(w)
    eps    = perturb(g)                         # rho g/||g||, or a variant
    second = evaluate(w + eps, batch)           # same random draws as first
    g_sam  = second.grads                       # or L-SAM / J-SAM's product

`evaluate(weights, batch)` returns a `Pass`; it comes from the backend
module (`keras_sam.core.tensorflow`) and has no side effects, so `w` is
never assigned `w + eps` and nothing needs restoring. The functions here
only combine passes: they are the algorithm and its variants, as options
of one pipeline (`perturb`).
"""

from typing import Any, Callable, NamedTuple, Optional

import tensorflow as tf

from keras_sam import perturbation as pert


class Pass(NamedTuple):
    """What one pass of the model at some weights gives."""

    loss: Any  # the loss as `compute_loss` returns it
    grads: list  # gradient of the (loss-scaled) loss, zeros for None
    y_pred: Any  # the model's outputs
    updates: dict  # index -> new value of each state variable it changed
    output_grads: Any = None  # d loss / d outputs (L-SAM and J-SAM only)
    vjp: Optional[Callable] = None  # cotangents -> gradient through f


def perturb(evaluate, weights, batch, grads, options, rho, seeds, names):
    """eps: random, or by (projected) gradient ascent in the chosen ball.

    The ascent runs in coordinates u with eps = T u, where T is ASAM's
    |w| + eta (1 without `adaptive`) times the Sparse SAM mask.

    Args:
        evaluate: `evaluate(weights, batch) -> Pass`.
        weights: List of weight tensors w.
        batch: The group's batch.
        grads: The gradient at w.
        options: A `SAMOptions`.
        rho: Scalar tensor, the radius.
        seeds: Callable `seeds(kind) -> [2] int32` stateless seed for
            "random" perturbations and "mask" draws.
        names: The weights' variable names (ASAM adapts by name).
    """
    if options.perturbation == "random":
        z = pert.random_directions([w.shape for w in weights], seeds("random"))
        return pert.dual_vector(z, rho, 2.0)
    scale = [tf.ones(w.shape, tf.float32) for w in weights]
    if options.adaptive:
        scale = pert.adaptive_scale(
            weights, options.eta, names, options.adapt_normalization
        )
    if options.perturbed_fraction < 1.0:
        mask = _mask(grads, options, seeds)
        scale = [t * k for t, k in zip(scale, mask)]

    def ascent_direction(g):
        scaled = [tf.cast(gi, tf.float32) * t for gi, t in zip(g, scale)]
        return pert.dual_vector(scaled, rho, options.p)

    u = ascent_direction(grads)
    for _ in range(options.ascent_steps - 1):
        point = add(weights, [ui * t for ui, t in zip(u, scale)])
        step = ascent_direction(evaluate(point, batch).grads)
        u = pert.project([a + b for a, b in zip(u, step)], rho, options.p)
    return [ui * t for ui, t in zip(u, scale)]


def _mask(grads, options, seeds) -> list:
    """Sparse SAM's 0/1 mask over all weights (Mi et al. 2022)."""
    if options.mask == "fisher":
        scores = [tf.square(tf.cast(g, tf.float32)) for g in grads]
    else:
        scores = pert.random_directions([g.shape for g in grads], seeds("mask"))
    return pert.top_fraction_mask(scores, options.perturbed_fraction)


def descent(evaluate, weights, batch, first: Pass, options, rho, seeds, names):
    """The SAM gradient of one group, from its pass at w.

    Returns:
        `(grads, loss_perturbed)`: the descent gradient and L(w + eps).
    """
    eps = perturb(
        evaluate, weights, batch, first.grads, options, rho, seeds, names
    )
    split = options.gradient_rule != "sam"
    second = evaluate(add(weights, eps), batch, output_grads=split)
    if options.gradient_rule == "sam":
        grads = second.grads
    elif options.gradient_rule == "jacobian":  # df/dw at w + eps
        grads = second.vjp(first.output_grads)
    else:  # "logit": dl/df at w + eps, df/dw at w
        grads = first.vjp(second.output_grads)
    return grads, second.loss


def add(weights, eps) -> list:
    """w + eps, each eps cast to its weight's dtype."""
    return [w + tf.cast(e, w.dtype) for w, e in zip(weights, eps)]


def zeros_for_none(grads, weights) -> list:
    """Zeros for weights the loss does not depend on (gradient None)."""
    return [tf.zeros_like(w) if g is None else g for g, w in zip(grads, weights)]
