"""The ascent step of SAM: turning a gradient into a weight perturbation.

Foret et al. (2021) approximate the inner maximisation

    eps*(w) = argmax_{||eps||_p <= rho} L(w + eps)

to first order, whose solution is the dual vector of the gradient (eq. 2):

    eps = rho * sign(g) * |g|^(q-1) / (||g||_q^q)^(1/p),    1/p + 1/q = 1.

For p = 2 this is rho * g / ||g||_2 and for p = inf it is rho * sign(g). The
norms are global: taken over all weight tensors together, as in the paper.
Everything here is a pure function of tensors written in `keras.ops`, so it
runs on every Keras backend, inside a `tf.function`, under XLA and in the
replica context of any `tf.distribute` strategy.
"""

import math
from typing import Optional, Sequence

from keras import ops

# Added to every norm before dividing by it, so that a zero gradient gives a
# zero perturbation rather than 0 / 0 = NaN.
NORM_EPSILON = 1e-12


def _float32(tensors) -> list:
    return [ops.cast(t, "float32") for t in tensors]


def _stored(t):
    """The stored values of a tensor: a row-sparse gradient's rows.

    TensorFlow gives an embedding's gradient as `tf.IndexedSlices`; once
    its duplicate rows are summed (the step does this where a pass hands
    its gradient over), its norms and elementwise maps are those of its
    stored rows, and keeping it sparse avoids a dense copy of the table.
    """
    return t.values if _is_rows(t) else t


def _rowwise(fn, t):
    """`fn` on each stored value, keeping a row-sparse tensor sparse."""
    if _is_rows(t):
        return type(t)(fn(t.values), t.indices, t.dense_shape)
    return fn(t)


def _is_rows(t) -> bool:
    return hasattr(t, "indices") and hasattr(t, "dense_shape")


def dense(t):
    """`t` as a dense tensor: a row-sparse one's rows scattered into
    zeros, duplicate rows summed (as `tf.convert_to_tensor` does)."""
    if not _is_rows(t):
        return t
    return ops.scatter(ops.expand_dims(t.indices, -1), t.values, t.shape)


def _sum(scalars):
    """The sum of a list of scalar tensors (`tf.add_n` in `keras.ops`)."""
    return ops.sum(ops.stack(scalars))


def check_p(p: float) -> float:
    """Validates the norm order `p` of the perturbation ball and returns it.

    Raises:
        ValueError: If `p` is not a number greater than 1 (p = 1 would
            perturb a single weight; Foret et al. appendix C.5 exclude it).
    """
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(
            f"`p` must be a number > 1 or float('inf'). Received: p={p!r}"
        ) from None
    if not p > 1.0:
        raise ValueError(
            "`p` must be > 1 (use p=2 for SAM or p=float('inf') for the "
            f"sign perturbation). Received: p={p}"
        )
    return p


def global_norm(tensors: Sequence[Optional[object]], p: float = 2.0):
    """The p-norm of a list of tensors taken as one flat vector, in float32.

    `None` entries (weights that do not influence the loss) count as zeros.

    >>> float(global_norm([ops.array([3.0]), ops.array([[4.0]])]))
    5.0
    """
    parts = _float32(_stored(t) for t in tensors if t is not None)
    if not parts:
        return ops.convert_to_tensor(0.0, "float32")
    if math.isinf(p):
        return ops.max(ops.stack([ops.max(ops.abs(t)) for t in parts]))
    if p == 2.0:
        return ops.sqrt(_sum([ops.sum(ops.square(t)) for t in parts]))
    total = _sum([ops.sum(ops.power(ops.abs(t), p)) for t in parts])
    return ops.power(total, 1.0 / p)


def dual_vector(grads: Sequence, rho, p: float = 2.0) -> list:
    """The first-order SAM perturbation eps for gradients `grads` (eq. 2).

    Args:
        grads: List of gradient tensors (use zeros for unconnected weights).
            A row-sparse gradient (`tf.IndexedSlices`) must list each row
            once, its lookups summed; its eps stays row-sparse.
        rho: Scalar (float or tensor), the radius of the perturbation ball.
        p: Float > 1 or `float("inf")`, the order of the norm ball.
            Defaults to 2.

    Returns:
        A list of float32 tensors shaped like `grads` whose global p-norm is
        `rho`; all zeros when the gradient is zero or not finite (so a
        float16 overflow in the ascent never reaches the weights).

    >>> eps = dual_vector([ops.array([3.0, 4.0])], rho=0.5)
    >>> [round(float(e), 2) for e in eps[0]]
    [0.3, 0.4]

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021, section 2, equation 2.
    """
    grads = _float32(grads)
    rho = ops.cast(rho, "float32")
    # The scalar factors are formed once: per weight tensor the map is one
    # product and one select (eager PyTorch pays per operation and tensor).
    if math.isinf(p):
        norm = global_norm(grads, p)  # only needed for the finiteness check
        direction = lambda g: rho * ops.sign(g)  # noqa: E731
    elif p == 2.0:
        norm = global_norm(grads, 2.0)
        factor = rho / (norm + NORM_EPSILON)
        direction = lambda g: g * factor  # noqa: E731
    else:
        q = p / (p - 1.0)
        norm = global_norm(grads, q)
        factor = rho / (ops.power(norm, q / p) + NORM_EPSILON)
        direction = lambda g: (  # noqa: E731
            ops.sign(g) * ops.power(ops.abs(g), q - 1.0) * factor
        )
    finite = ops.isfinite(norm)
    zero = ops.zeros((), "float32")
    return [
        _rowwise(lambda v: ops.where(finite, direction(v), zero), g)
        for g in grads
    ]


def project(eps: Sequence, rho, p: float) -> list:
    """Projects `eps` onto the ball ||eps||_p <= rho (p = 2 or inf).

    >>> [float(e) for e in project([ops.array([3.0, 4.0])], 1.0, 2.0)[0]]
    [0.6000000238418579, 0.800000011920929]
    """
    rho = ops.cast(rho, "float32")
    if math.isinf(p):
        return [_rowwise(lambda v: ops.clip(v, -rho, rho), e) for e in eps]
    if p != 2.0:
        raise ValueError(
            f"Projection is implemented for p=2 and p=inf. Received: p={p}"
        )
    norm = global_norm(eps, 2.0)
    scale = ops.minimum(1.0, rho / (norm + NORM_EPSILON))
    return [e * scale for e in eps]


def adaptive_scale(
    weights: Sequence,
    eta: float,
    names: Sequence[str],
    adapt_normalization: bool = True,
) -> list:
    """ASAM's T_w: |w| + eta for adapted weights, 1 for the others.

    Kwon et al.'s official code adapts every PyTorch parameter whose name
    contains "weight": kernels, embeddings and the scales of LayerNorm and
    BatchNorm, but not biases. In Keras names that is every weight except
    biases and normalisation offsets ("bias", "beta"); with
    `adapt_normalization=False` normalisation scales ("gamma") are left
    out too.

    >>> [ops.convert_to_numpy(t).tolist() for t in adaptive_scale(
    ...     [ops.array([[-2.0]]), ops.array([5.0]), ops.array([-3.0])],
    ...     eta=0.5, names=["kernel", "bias", "gamma"])]
    [[[2.5]], [1.0], [3.5]]

    References:
        Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for
        Scale-Invariant Learning of Deep Neural Networks", ICML 2021, eq. 10.
    """
    fixed = {"bias", "beta"} | (set() if adapt_normalization else {"gamma"})

    def adapted(name):
        leaf = name.split("/")[-1]
        return leaf not in fixed and not leaf.endswith("_bias")

    return [
        ops.abs(ops.cast(w, "float32")) + eta
        if adapted(name)
        else ops.ones(w.shape, "float32")
        for w, name in zip(weights, names)
    ]


def top_fraction_mask(scores: Sequence, fraction: float) -> list:
    """1.0 where a score is among the largest `fraction` of all scores.

    Used for Sparse SAM: the scores are squared gradients (a diagonal
    empirical Fisher information) or uniform noise for a random mask. The
    scores' magnitudes count. No sort: the k-th largest score is found exactly
    by `kth_largest`'s bisection, so ties at it are all kept.

    >>> [ops.convert_to_numpy(m).tolist() for m in top_fraction_mask(
    ...     [ops.array([1.0, 4.0]), ops.array([3.0, 2.0])], 0.5)]
    [[0.0, 1.0], [1.0, 0.0]]

    References:
        Mi et al., "Make Sharpness-Aware Minimization Stronger: A Sparsified
        Perturbation Approach", NeurIPS 2022, section 3 (Fisher mask).
    """
    scores = [_rowwise(ops.abs, s) for s in _float32(scores)]
    size = sum(math.prod(s.shape) for s in scores)
    count = max(int(round(fraction * size)), 1)
    # A row-sparse score's absent rows are zeros: kept only when the
    # threshold is 0, as they would be among the dense scores.
    threshold = kth_largest([_stored(s) for s in scores], count)
    return [
        ops.cast(dense(s) >= threshold, "float32") for s in scores
    ]


def kth_largest(values: Sequence, k: int):
    """The k-th largest of non-negative float32 `values`, without a sort.

    Non-negative floats order like their bit patterns read as int32, so a
    31-step bisection over those integers, each step one count over all
    values, finds the k-th largest exactly: O(31 n) elementwise work and
    no global sort (no concatenation of the weights either).

    >>> float(kth_largest([ops.array([0.5, 3.0]), ops.array([2.0])], 2))
    2.0
    """
    bits = [ops.view(v, "int32") for v in _float32(values)]

    def at_least(t):
        return _sum([ops.sum(ops.cast(b >= t, "int32")) for b in bits])

    def body(low, high):
        mid = low + (high - low + 1) // 2
        ok = at_least(mid) >= k
        return ops.where(ok, mid, low), ops.where(ok, high, mid - 1)

    low, _ = ops.while_loop(
        lambda low, high: low < high,
        body,
        (ops.convert_to_tensor(0, "int32"),
         ops.convert_to_tensor(0x7F800000, "int32")),
        maximum_iterations=32,
    )
    return ops.view(low, "float32")
