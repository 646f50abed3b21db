"""An independent float64 reference of one SAM step, for any Keras model.

The tests compare keras_sam's training step against this module, which
deliberately does not import keras_sam. The forward pass is Keras' own (the
same architecture built a second time in float64 and called with
`stateless_call` at explicit weights); everything SAM does on top of it is
written here by hand from the papers, on plain lists of float64 tensors:

    p = 2          eps = rho g/||g||_2                Foret et al. 2021, eq. 2
    p = inf        eps = rho sign(g)                  Foret et al., eq. 2
    ASAM           eps = rho T^2 g/||T g||,
                   T = |w| + eta (1 on biases, betas) Kwon et al. 2021, eq. 10
    Sparse SAM     eps = rho (M g)/||M g||,
                   M = 1 on the largest g^2           Mi et al. 2022, sec. 3
    random         eps = rho z/||z||, z ~ N(0, I)     Foret et al., App. C.5
    ascent steps   projected ascent in the ball       Foret et al., App. C.6
    second order   d/dw L(w + eps(w))                 Foret et al., App. C.4
    L-SAM, J-SAM   (dl/df)(df/dw), one factor at
                   w + eps                            Baek et al. 2024, 2.8-2.9
    m              the SAM gradients of consecutive
                   groups of m examples (and one of
                   those left over), weighted by size Foret et al., sec. 4.1

g is the gradient at w of the compiled loss: sparse softmax cross-entropy
of the logits averaged over the batch, plus the model's own losses
(regularisers). All norms are global, over every trainable weight. A
row-sparse gradient (an `Embedding`'s on TensorFlow) is made dense, which
sums the rows of repeated tokens.

It runs on the backend Keras runs on (`keras.ops`, gradients by
`tests/autodiff.py`), in float64 (on JAX inside `jax.enable_x64`).
"""

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import keras
import numpy as np
from keras import ops

from tests import autodiff

DTYPE = "float64"
# Weight names (the variable name's last component) that ASAM leaves
# unscaled (T = 1): biases and normalisation offsets.
UNADAPTED_NAMES = ("bias", "beta")


def in_float64(function):
    """Runs `function` where float64 stays float64 (`autodiff.float64`)."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with autodiff.float64():
            return function(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def float64_policy():
    """Builds layers in float64 inside the block, restoring the policy."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@in_float64
def float64_twin(build: Callable[[], keras.Model], model) -> keras.Model:
    """The architecture `build()` makes, in float64, with `model`'s state.

    Args:
        build: A function that builds a fresh, plain `keras.Model` with the
            architecture of `model` under the current dtype policy.
        model: The model whose variables are copied: its trainable ones
            and its non-trainable ones (moving statistics, and the states
            of seed generators, which `model.weights` leaves out).

    Returns:
        A float64 `keras.Model` holding a copy of `model`'s variables.
    """
    with float64_policy():
        twin = build()
    # cuDNN's fused recurrent kernels have no float64 (on a GPU JAX's
    # `cudnn_rnn_bwd_ffi` refuses f64 operands): the twin's LSTMs and GRUs
    # take Keras' generic loop, which every CPU run takes anyway.
    for layer in twin._flatten_layers():  # as tests/test_model.py
        if hasattr(layer, "use_cudnn"):
            layer.use_cudnn = False
    sources = model.trainable_variables + model.non_trainable_variables
    targets = twin.trainable_variables + twin.non_trainable_variables
    assert [(v.name, tuple(v.shape)) for v in sources] == [
        (v.name, tuple(v.shape)) for v in targets
    ], "the float64 twin must have the same variables in the same order"
    for source, target in zip(sources, targets):
        target.assign(numpy(source).astype(target.dtype))
    return twin


@dataclasses.dataclass(frozen=True)
class Options:
    """The SAM variant of a step: keras_sam's option names, one at a time.

    The oracle writes each variant's formula on its own, so it supports
    at most one of `p=inf`, `adaptive`, `perturbed_fraction < 1`,
    `ascent_steps > 1`, `second_order`, `perturbation="random"` and
    `gradient_rule != "sam"`, alone or with `m`.
    """

    m: Optional[int] = None
    p: float = 2.0
    adaptive: bool = False
    eta: float = 0.01
    perturbed_fraction: float = 1.0
    mask: str = "fisher"
    ascent_steps: int = 1
    second_order: bool = False
    perturbation: str = "gradient"
    gradient_rule: str = "sam"
    seed: int = 0

    def __post_init__(self):
        variants = [
            self.p != 2.0,
            self.adaptive,
            self.perturbed_fraction < 1.0,
            self.ascent_steps > 1,
            self.second_order,
            self.perturbation != "gradient",
            self.gradient_rule != "sam",
        ]
        if sum(variants) > 1:
            raise NotImplementedError(f"one variant at a time: {self}")
        if self.p not in (2.0, math.inf):
            raise NotImplementedError(f"p={self.p}: only 2 and inf")
        if self.mask != "fisher":
            raise NotImplementedError(f"mask={self.mask!r}: only 'fisher'")
        if self.perturbation not in ("gradient", "random"):
            raise NotImplementedError(f"perturbation={self.perturbation!r}")


class Forward(NamedTuple):
    """One training pass of the float64 model at some weights."""

    logits: Any  # the model's outputs
    penalty: Any  # the sum of the model's own losses (regularisers)
    state: list  # the non-trainable values after the pass


class Step(NamedTuple):
    """The reference of one SAM step on a batch."""

    grads: list  # g: the gradient of the whole batch's loss at w
    sam_grads: list  # the descent gradient: new weights = w - lr sam_grads
    grad_norm: float  # ||g||_2 (m: the mean over groups of the groups')
    sharpness: float  # L(w + eps) - L(w) (m: the mean over groups)
    state: list  # non-trainable values after a pass at w (m: group mean)
    perturbed_state: list  # the same after a pass at w + eps


def data_loss(y, logits):
    """Sparse softmax cross-entropy of logits, averaged over the batch:
    the mean of -log softmax(logits)[y]."""
    labels = ops.expand_dims(ops.convert_to_tensor(np.asarray(y), "int32"), -1)
    picked = ops.take_along_axis(ops.log_softmax(logits, axis=-1), labels, -1)
    return -ops.mean(picked)


class Oracle:
    """Loss and gradients of a float64 Keras model at explicit weights.

    Args:
        model: A float64 `keras.Model` whose outputs are logits. Its
            current variables are w and the state every pass starts from.
    """

    @in_float64
    def __init__(self, model):
        self.model = model
        self.weights = [
            ops.convert_to_tensor(numpy(v), DTYPE)
            for v in model.trainable_variables
        ]
        self.names = [v.name for v in model.trainable_variables]
        self.state = [
            ops.convert_to_tensor(numpy(v))
            for v in model.non_trainable_variables
        ]

    def forward(self, weights, x) -> Forward:
        """The training pass (`training=True`) at `weights`."""
        logits, state, losses = self.model.stateless_call(
            weights, self.state, _float64(x), training=True,
            return_losses=True,
        )
        penalty = sum((ops.cast(l, DTYPE) for l in losses),
                      ops.convert_to_tensor(0.0, DTYPE))
        return Forward(logits, penalty, state)

    def loss(self, weights, x, y):
        """L(weights): the compiled loss plus the model's own losses."""
        result = self.forward(weights, x)
        return data_loss(y, result.logits) + result.penalty

    def gradient(self, weights, x, y) -> list:
        """grad L(weights), dense."""
        return autodiff.grad(lambda w: self.loss(w, x, y), weights)

    def output_gradient(self, weights, x, y):
        """dL/df at `weights`: the loss's gradient in the logits."""
        logits = self.forward(weights, x).logits
        return autodiff.grad(lambda f: data_loss(y, f[0]), [logits])[0]

    def vjp(self, weights, x, cotangent) -> list:
        """grad over w of <cotangent, f(w)> + the model's own losses."""

        def surrogate(w):
            result = self.forward(w, x)
            return ops.sum(cotangent * result.logits) + result.penalty

        return autodiff.grad(surrogate, weights)

    def shapes(self) -> list:
        return [w.shape for w in self.weights]


# ------------------------------------------------------- list arithmetic


def numpy(t) -> np.ndarray:
    """A tensor or variable of any backend as a NumPy array."""
    return np.asarray(ops.convert_to_numpy(t))


def is_floating(t) -> bool:
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(
        t.dtype))


def _float64(x):
    """Floating inputs as float64, integer inputs (tokens) unchanged; a
    nested structure of inputs (a dict) input by input."""

    def cast(t):
        t = np.asarray(t)
        dtype = DTYPE if np.issubdtype(t.dtype, np.floating) else t.dtype
        return ops.convert_to_tensor(t, dtype)

    return keras.tree.map_structure(cast, x)


def add(a, b) -> list:
    return [x + y for x, y in zip(a, b)]


def scale(tensors, factor) -> list:
    return [factor * t for t in tensors]


def times(a, b) -> list:
    return [x * y for x, y in zip(a, b)]


def norm(tensors):
    """The global 2-norm of a list of tensors."""
    return ops.sqrt(sum(ops.sum(t**2) for t in tensors))


def weighted(shares, lists) -> list:
    """sum_k shares[k] * lists[k], elementwise (integer state, such as a
    seed generator's, is the same in every list: the first)."""
    return [
        sum(share * part for share, part in zip(shares, parts))
        if is_floating(parts[0]) else parts[0]
        for parts in zip(*lists)
    ]


def max_difference(a, b) -> float:
    """The largest absolute difference between two lists of tensors."""
    return max(
        float(np.max(np.abs(numpy(x) - numpy(y))))
        for x, y in zip(a, b)
    )


# ---------------------------------------------------------- the variants


def dual(grads, rho, p) -> list:
    """eps of radius rho along `grads`: eq. 2 for p = 2 and p = inf."""
    if math.isinf(p):
        return [rho * ops.sign(g) for g in grads]
    return scale(grads, rho / norm(grads))


def project(u, rho, p) -> list:
    """u projected onto the ball ||u||_p <= rho (p = 2 or inf)."""
    if math.isinf(p):
        return [ops.clip(t, -rho, rho) for t in u]
    return scale(u, ops.minimum(1.0, rho / norm(u)))


def adaptive_scale(weights, names, eta) -> list:
    """ASAM's T: |w| + eta, except 1 on biases and normalisation offsets."""

    def adapted(name):
        leaf = name.split("/")[-1]
        return leaf not in UNADAPTED_NAMES and not leaf.endswith("_bias")

    return [
        ops.abs(w) + eta if adapted(name) else ops.ones_like(w)
        for w, name in zip(weights, names)
    ]


def fisher_count(grads, fraction) -> int:
    """How many scalars Sparse SAM perturbs: round(fraction * total)."""
    total = sum(int(np.prod(g.shape)) for g in grads)
    return max(int(round(fraction * total)), 1)


def scores(grads) -> list:
    """Each trainable scalar's g^2, as NumPy arrays (one rounding, used
    both to find the threshold and to compare with it)."""
    return [np.square(numpy(g)) for g in grads]


def sorted_scores(grads) -> np.ndarray:
    """Every trainable scalar's g^2, largest first."""
    return np.sort(np.concatenate([s.ravel() for s in scores(grads)]))[::-1]


def fisher_mask(grads, fraction) -> list:
    """1 where g^2 is among the largest `fraction` of all scalars (ties at
    the threshold kept), else 0 (Mi et al.'s Fisher mask)."""
    threshold = sorted_scores(grads)[fisher_count(grads, fraction) - 1]
    return [ops.convert_to_tensor(s >= threshold, DTYPE)
            for s in scores(grads)]


def fisher_margin(grads, fraction) -> float:
    """The relative gap between the last kept and the first dropped g^2:
    a float32 step picks the same mask only if rounding cannot close it."""
    ranked = sorted_scores(grads)
    count = fisher_count(grads, fraction)
    if count >= len(ranked):
        return math.inf
    kept, dropped = ranked[count - 1], ranked[count]
    return float((kept - dropped) / kept)


def normal_draw(shapes, seed, step=0, replica=0, kind="random") -> list:
    """z ~ N(0, I) as keras_sam documents its random draws on each
    backend, drawn in float32 (as the step draws them), as float64 NumPy
    arrays. `kind`: "random" (a random eps) or "mask" (a random mask; `step`
    is then the step of the mask's last update).

    - TensorFlow: stateless draws from the seed pair [seed, step] (a
      mask's folded with 1) folded with the replica id, split into one
      seed per weight;
    - JAX: the key of `seed` (a mask's folded with 1) folded with the
      step, split per weight;
    - PyTorch: one generator seeded with (seed * 1000003 + step) * 2 (+ 1
      for a mask), drawing the weights in turn.
    """
    mask = int(kind == "mask")
    if autodiff.BACKEND == "tensorflow":
        import tensorflow as tf

        pair = tf.constant([seed, step], tf.int32)
        if mask:
            pair = tf.random.experimental.stateless_fold_in(pair, 1)
        pair = tf.random.experimental.stateless_fold_in(pair, replica)
        seeds = tf.random.experimental.stateless_split(pair, num=len(shapes))
        draws = [
            tf.random.stateless_normal(shape, s, dtype=tf.float32)
            for shape, s in zip(shapes, tf.unstack(seeds))
        ]
    elif autodiff.BACKEND == "jax":
        import jax

        assert replica == 0, "one device"
        key = jax.random.key(seed)
        if mask:
            key = jax.random.fold_in(key, 1)
        key = jax.random.fold_in(key, step)
        keys = jax.random.split(key, len(shapes))
        draws = [jax.random.normal(k, tuple(shape), "float32")
                 for k, shape in zip(keys, shapes)]
    else:
        import torch

        assert replica == 0, "one device"
        generator = torch.Generator().manual_seed(
            (seed * 1_000_003 + step) * 2 + mask
        )
        draws = [torch.randn(tuple(shape), generator=generator)
                 for shape in shapes]
    return [numpy(z).astype(np.float64) for z in draws]


def random_eps(oracle, rho, seed) -> list:
    """rho z/||z||, z ~ N(0, I) (Foret et al. appendix C.5)."""
    z = [ops.convert_to_tensor(a, DTYPE)
         for a in normal_draw(oracle.shapes(), seed)]
    return scale(z, rho / norm(z))


def asam_eps(oracle, grads, rho, eta) -> list:
    """rho T^2 g/||T g|| (Kwon et al. eq. 10)."""
    t = adaptive_scale(oracle.weights, oracle.names, eta)
    return scale(times(times(t, t), grads), rho / norm(times(t, grads)))


def sparse_eps(grads, rho, fraction) -> list:
    """rho (M g)/||M g||, M the Fisher mask (Mi et al. section 3)."""
    masked = times(fisher_mask(grads, fraction), grads)
    return scale(masked, rho / norm(masked))


def ascent_eps(oracle, x, y, grads, rho, p, steps) -> list:
    """`steps` full-radius ascent steps, each projected onto the ball:
    u = dual(g); then u = project(u + dual(grad L(w + u))) (App. C.6)."""
    u = dual(grads, rho, p)
    for _ in range(steps - 1):
        g_u = oracle.gradient(add(oracle.weights, u), x, y)
        u = project(add(u, dual(g_u, rho, p)), rho, p)
    return u


def perturbation(oracle, x, y, grads, rho, options) -> list:
    """eps of one group, for every first-order variant."""
    if options.perturbation == "random":
        return random_eps(oracle, rho, options.seed)
    if options.adaptive:
        return asam_eps(oracle, grads, rho, options.eta)
    if options.perturbed_fraction < 1.0:
        return sparse_eps(grads, rho, options.perturbed_fraction)
    return ascent_eps(
        oracle, x, y, grads, rho, options.p, options.ascent_steps
    )


def second_order_gradient(oracle, x, y, rho) -> tuple:
    """d/dw L(w + eps(w)) with eps(w) = rho g(w)/||g(w)||, through eps.

    Returns:
        `(gradient, eps)`.
    """

    def eps_of(w):
        g = oracle.gradient(w, x, y)
        return scale(g, rho / norm(g))

    def perturbed_loss(w):
        return oracle.loss(add(w, eps_of(w)), x, y)

    w = oracle.weights
    return autodiff.grad(perturbed_loss, w), eps_of(w)


def descent_gradient(oracle, x, y, eps, rule) -> list:
    """The gradient applied at w, from the perturbation eps.

    "sam": grad L(w + eps). "logit" (L-SAM): dl/df at w + eps times df/dw
    at w. "jacobian" (J-SAM): dl/df at w times df/dw at w + eps. In the
    split rules the model's own losses are differentiated where df/dw is.
    """
    w = oracle.weights
    point = add(w, eps)
    if rule == "sam":
        return oracle.gradient(point, x, y)
    if rule == "logit":
        return oracle.vjp(w, x, oracle.output_gradient(point, x, y))
    if rule == "jacobian":
        return oracle.vjp(point, x, oracle.output_gradient(w, x, y))
    raise NotImplementedError(f"gradient_rule={rule!r}")


def group_step(oracle, x, y, rho, options) -> Step:
    """One SAM step with one perturbation for the whole of (x, y)."""
    w = oracle.weights
    g = oracle.gradient(w, x, y)
    if options.second_order:
        sam_grads, eps = second_order_gradient(oracle, x, y, rho)
    else:
        eps = perturbation(oracle, x, y, g, rho, options)
        sam_grads = descent_gradient(
            oracle, x, y, eps, options.gradient_rule
        )
    point = add(w, eps)
    return Step(
        grads=g,
        sam_grads=sam_grads,
        grad_norm=float(norm(g)),
        sharpness=float(oracle.loss(point, x, y) - oracle.loss(w, x, y)),
        state=oracle.forward(w, x).state,
        perturbed_state=oracle.forward(point, x).state,
    )


@in_float64
def sam_step(oracle, x, y, rho, **options) -> Step:
    """The reference of one SAM step of `oracle`'s model on (x, y).

    Args:
        oracle: An `Oracle` of the float64 model at the step's weights w.
        x: The batch's inputs.
        y: Its integer labels.
        rho: The radius of the perturbation.
        **options: keras_sam's option names (see `Options`).

    Returns:
        A `Step`. With `m`, the batch is split into consecutive groups of
        m examples and one smaller group of the examples left over. The
        batch's loss is the mean of the groups' mean losses weighted by
        their shares of the batch, so the SAM gradient, gradient norm,
        sharpness and state are the groups' means with those weights (plain
        means for equal groups); `grads` is the whole batch's gradient.
    """
    options = Options(**options)
    m = options.m
    if m is None or m >= len(y):
        return group_step(oracle, x, y, rho, options)
    starts = range(0, len(y), m)
    rows = lambda i: keras.tree.map_structure(  # noqa: E731 (nested x)
        lambda t: t[i : i + m], x)
    parts = [
        group_step(oracle, rows(i), y[i : i + m], rho, options)
        for i in starts
    ]
    shares = [len(y[i : i + m]) / len(y) for i in starts]
    return Step(
        grads=oracle.gradient(oracle.weights, x, y),
        sam_grads=weighted(shares, [s.sam_grads for s in parts]),
        grad_norm=float(np.dot(shares, [s.grad_norm for s in parts])),
        sharpness=float(np.dot(shares, [s.sharpness for s in parts])),
        state=weighted(shares, [s.state for s in parts]),
        perturbed_state=weighted(shares, [s.perturbed_state for s in parts]),
    )


@in_float64
def sgd_weights(oracle, grads, learning_rate=1.0) -> list:
    """w - learning_rate * grads."""
    return [w - learning_rate * g for w, g in zip(oracle.weights, grads)]
