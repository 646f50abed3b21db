"""One SAM step on one group of examples (Foret et al. 2021, Algorithm 1).

    first  = evaluate(w, batch)                 # loss, g = grad L_B(w)
    eps    = perturb(g)                         # rho g/||g||, or a variant
    second = evaluate(w + eps, batch)           # same random draws as first
    g_sam  = second.grads                       # or L-SAM / J-SAM's product

`evaluate(weights, batch)` returns a `Pass`; it comes from the backend
module (`keras_sam.backend.<name>.step`) and has no side effects, so `w` is
never assigned `w + eps` and nothing needs restoring. The functions here
only combine passes: they are the algorithm and its variants, as options
of one pipeline (`perturb`): a direction (the gradient, a random draw or
the optimizer's momentum), ASAM's scale, Sparse SAM's mask, the dual
vector in the p-ball, and projected ascent steps.
"""

from typing import Any, Callable, NamedTuple, Optional

from keras import ops

from keras_sam.core import perturbation as pert


class Pass(NamedTuple):
    """What one pass of the model at some weights gives."""

    loss: Any  # the loss as `compute_loss` returns it
    grads: Optional[list]  # gradient of the (scaled) loss; None: forward only
    y_pred: Any  # the model's outputs
    updates: dict  # index -> new value of each state variable it changed
    output_grads: Any = None  # d loss / d outputs (L-SAM and J-SAM only)
    vjp: Optional[Callable] = None  # cotangents -> gradient through f
    # `grads` as the ascent reads them, where they differ: a row-sparse
    # gradient (an embedding's `tf.IndexedSlices`) lists a row once per
    # lookup; here each row once, with its lookups summed, so that norms
    # and elementwise maps of the stored rows are those of the gradient.
    summed: Optional[list] = None

    @property
    def ascent_grads(self) -> Optional[list]:
        """The gradient for the ascent (norms, eps): rows summed."""
        return self.grads if self.summed is None else self.summed


class StepResult(NamedTuple):
    """What a backend's `sam_gradients` gives for one replica's batch."""

    grads: list  # descent gradient for `model.trainable_variables`
    y_pred: Any  # the outputs at w
    loss: Any  # the loss at w, as `compute_loss` returns it
    stats: dict  # grad_norm, sharpness, sam_weight (float32 scalars)


class Inputs(NamedTuple):
    """What the pipeline needs besides the weights, batch and gradient."""

    normal: Callable  # normal(shapes, kind) -> N(0, 1) draws of this step
    names: list  # the weights' variable names (ASAM adapts by name)
    mask: Optional[Callable] = None  # grads -> a kept Sparse SAM mask or None
    momentum: Optional[list] = None  # Momentum-SAM's v (gradient-like)


def perturb(evaluate, weights, batch, grads, options, rho, inputs):
    """eps, by one pipeline: direction, scale, mask, dual vector, ascent.

    The ascent runs in coordinates u with eps = T u, where T is ASAM's
    |w| + eta (1 without `adaptive`) times the Sparse SAM mask. The
    direction in u is T g for the gradient, T (-v) for Momentum-SAM's
    momentum v (Momentum-SAM: eps = -rho v/||v||, Becker et al. 2024) and an
    isotropic z ~ N(0, I) (masked) for a random perturbation; u is its dual
    vector in the p-ball of radius rho (eq. 2), then `ascent_steps - 1`
    projected gradient steps (appendix C.6).

    Args:
        evaluate: `evaluate(weights, batch) -> Pass`.
        weights: List of weight tensors w.
        batch: The group's batch.
        grads: The gradient at w (None for "random" and "momentum").
        options: A `SAMOptions`.
        rho: Scalar tensor, the radius.
        inputs: `Inputs`: random draws, names, a kept mask, the momentum.

    References:
        Foret et al. 2021, eq. 2 and appendices C.5-C.6; Kwon et al.
        2021, eq. 10 (ASAM); Mi et al. 2022, section 3 (Sparse SAM);
        Becker et al., "Momentum-SAM: Sharpness Aware Minimization
        without Computational Overhead", 2024.
    """
    mask = None if inputs.mask is None else inputs.mask(grads)
    if mask is None:
        mask = _mask(grads, weights, options, inputs.normal)
    scale = _adaptive(weights, options, inputs.names)
    scale = mask if scale is None else _times(scale, mask)
    if options.perturbation == "random":
        d = inputs.normal([w.shape for w in weights], "random")
        return _times(pert.dual_vector(_times(d, mask), rho, options.p), scale)
    source = grads
    if options.perturbation == "momentum":
        source = [-ops.cast(v, "float32") for v in inputs.momentum]

    def ascent_direction(g):
        scaled = _times([ops.cast(gi, "float32") for gi in g], scale)
        return pert.dual_vector(scaled, rho, options.p)

    u = ascent_direction(source)
    for _ in range(options.ascent_steps - 1):
        point = add(weights, _times(u, scale))
        step = ascent_direction(evaluate(point, batch).ascent_grads)
        u = pert.project(
            [ops.add(a, b) for a, b in zip(u, step)], rho, options.p
        )
    return _times(u, scale)


def _adaptive(weights, options, names) -> Optional[list]:
    """ASAM's T_w = |w| + eta, or None (T = 1) without `adaptive`."""
    if not options.adaptive:
        return None
    return pert.adaptive_scale(
        weights, options.eta, names, options.adapt_normalization
    )


def _times(tensors, scale) -> list:
    """Elementwise products; `scale=None` stands for ones."""
    if scale is None:
        return tensors
    return [a * b for a, b in zip(tensors, scale)]


def _mask(grads, weights, options, normal) -> Optional[list]:
    """Sparse SAM's 0/1 mask, None when dense (Mi et al. 2022)."""
    if options.perturbed_fraction >= 1.0:
        return None
    return compute_mask(grads, weights, options, normal)


def compute_mask(grads, weights, options, normal) -> list:
    """The mask of the largest squared gradients (Fisher) or of a uniform
    random subset (|z| of a stateless draw), `perturbed_fraction` of all."""
    if options.mask == "fisher":
        scores = [ops.square(ops.cast(g, "float32")) for g in grads]
    else:
        scores = normal([w.shape for w in weights], "mask")
    return pert.top_fraction_mask(scores, options.perturbed_fraction)


def descent(evaluate, weights, batch, first: Pass, options, rho, inputs):
    """The SAM gradient of one group, from its pass at w.

    Returns:
        `(grads, loss_perturbed)`: the descent gradient and L(w + eps).
    """
    eps = perturb(
        evaluate, weights, batch, first.ascent_grads, options, rho, inputs
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


def first_pass(evaluate, weights, batch, options) -> Pass:
    """The pass at w: with its gradient unless eps does not need it (a
    random or momentum perturbation: a forward pass for the logs only)."""
    return evaluate(
        weights,
        batch,
        output_grads=options.gradient_rule != "sam",
        need_grads=options.perturbation == "gradient",
    )


def looksam_direction(grads, sam_grads) -> list:
    """g_v: the part of the SAM gradient orthogonal to g (LookSAM).

    References:
        Liu et al., "Towards Efficient and Scalable Sharpness-Aware
        Minimization", CVPR 2022, Algorithm 1 (g_v = g_s - ||g_s|| cos(theta)
        g/||g||).
    """
    g, s = _dense_float32(grads), _dense_float32(sam_grads)
    dot = ops.sum(ops.stack([ops.sum(a * b) for a, b in zip(g, s)]))
    coefficient = dot / (ops.square(pert.global_norm(g)) + pert.NORM_EPSILON)
    return [b - coefficient * a for a, b in zip(g, s)]


def looksam_gradient(grads, direction, alpha) -> list:
    """LookSAM between SAM steps: g + alpha ||g||/||g_v|| g_v (Algorithm 1).

    `alpha` may be a tensor (0 gives g exactly). A zero g_v adds nothing.
    """
    grads = [pert.dense(g) for g in grads]
    norm = pert.global_norm(grads)
    coefficient = alpha * norm / (pert.global_norm(direction)
                                  + pert.NORM_EPSILON)
    return [
        g + ops.cast(coefficient * v, g.dtype) for g, v in zip(grads, direction)
    ]


def _dense_float32(tensors) -> list:
    """Dense float32 copies (a row-sparse gradient's rows summed)."""
    return [ops.cast(pert.dense(t), "float32") for t in tensors]


def add(weights, eps) -> list:
    """w + eps, each eps cast to its weight's dtype (a row-sparse eps is
    added at its rows)."""
    return [ops.add(w, ops.cast(e, w.dtype)) for w, e in zip(weights, eps)]


def zeros_for_none(grads, weights) -> list:
    """Zeros for weights the loss does not depend on (gradient None)."""
    return [
        ops.zeros_like(w) if g is None else g for g, w in zip(grads, weights)
    ]


def check_logit_loss(model, rule):
    """L-SAM and J-SAM split gradients at the logits: they need them."""
    config = getattr(model.loss, "get_config", dict)()
    if rule != "sam" and not config.get("from_logits", False):
        raise ValueError(
            f"gradient_rule={rule!r} splits each gradient into "
            "dloss/dlogits and dlogits/dw, so the model must output "
            "logits and the loss must take them: compile with e.g. "
            "keras.losses.SparseCategoricalCrossentropy("
            f"from_logits=True). Received: loss={model.loss!r}"
        )
