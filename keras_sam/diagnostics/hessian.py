"""Curvature of the training loss: Hessian-vector products, top eigenvalues
by Lanczos and the trace by Hutchinson's estimator.

The Hessian H of the full-data loss L(w) is never formed. Each product Hv is
computed by double backpropagation, batch by batch:

    Hv = d/dw (grad L_B(w) . v),   Hv = sum_B n_B H_B v / sum_B n_B,

with the model evaluated by `stateless_call(..., training=False)` (see
`stateless_loss`), so the model's variables are never modified and
BatchNormalization is in inference mode. Lanczos iterations with full
reorthogonalisation turn k such products into a k x k tridiagonal matrix
whose extreme eigenvalues approximate those of H (Ghorbani et al. 2019, as
Foret et al. use in section 4.2); Hutchinson's estimator averages z'Hz over
random sign vectors z, whose expectation is trace(H).

Memory: Lanczos keeps `num_iters` float64 vectors of the model's size.

The products need the TensorFlow backend (`tf.GradientTape` in
`tf.function`); on another backend `HessianOperator` and the functions built
on it raise a `RuntimeError` that says so. `lanczos_tridiagonal` is NumPy
and takes any symmetric operator.
"""

from typing import Callable, NamedTuple

import keras
import numpy as np

from keras_sam import _optional
from keras_sam.diagnostics import stateless_loss

# Imported at first use: the module imports on every backend.
tf = _optional.LazyTensorFlow("keras_sam.diagnostics.hessian")

# Lanczos restarts when the new residual is this small relative to the
# largest entry of the tridiagonal matrix (an invariant subspace was found),
# about the float32 precision of the products.
BREAKDOWN_TOLERANCE = 1e-6


class HessianOperator:
    """The Hessian of a model's full-data loss at its current weights.

    Args:
        model: A built Keras model; its weights are read once, at
            construction, and never modified.
        data: Tuple `(x, y)` or `(x, y, sample_weight)` of arrays, or a
            batched `tf.data.Dataset` of such tuples.
        loss_fn: Optional loss (see `stateless_loss.StatelessLoss`);
            defaults to the model's compiled loss.
        batch_size: Integer, the batch size for arrays. Defaults to 128.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> data = (np.eye(2, dtype="float32"), np.zeros((2, 1), "float32"))
    >>> hessian = HessianOperator(model, data, loss_fn="mse")
    >>> hessian.dim
    3
    >>> hessian.matvec(np.array([0.0, 0.0, 1.0])).round(3).tolist()
    [1.0, 1.0, 2.0]
    """

    def __init__(self, model, data, loss_fn=None, batch_size: int = 128):
        stateless_loss.check_backend(type(self).__name__)
        self._full = stateless_loss.DatasetLoss(
            model, data, loss_fn, batch_size
        )
        self._trainable = self._full.trainable
        self._non_trainable = self._full.non_trainable
        self.dim = self._full.dim
        self._batch_hvp = tf.function(self._hvp, reduce_retracing=True)

    def _hvp(self, trainable, non_trainable, vector, x, y, sample_weight):
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(trainable)
            _, grads = stateless_loss.loss_and_gradient(
                self._full.loss, trainable, non_trainable, x, y,
                sample_weight,
            )
            dot = tf.add_n(
                [tf.reduce_sum(g * v) for g, v in zip(grads, vector)]
            )
        return outer.gradient(
            dot, trainable, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )

    def matvec(self, vector: np.ndarray) -> np.ndarray:
        """H v for a flat vector `v` of size `dim`, as a float64 vector."""
        parts = stateless_loss.unflatten(vector, self._trainable)
        product = stateless_loss.weighted_mean(
            lambda x, y, sample_weight: self._batch_hvp(
                self._trainable, self._non_trainable, parts, x, y,
                sample_weight,
            ),
            self._full.dataset,
        )
        return stateless_loss.flatten(product)


def hessian_vector_product(
    model, data, vector, loss_fn=None, batch_size: int = 128
) -> list:
    """The product of the full-data loss Hessian with `vector`.

    Args:
        model: A built Keras model (not modified).
        data: Tuple of arrays or a batched `tf.data.Dataset`, see
            `HessianOperator`.
        vector: List of arrays shaped like `model.trainable_variables`, or
            one flat vector of their total size.
        loss_fn: Optional loss; defaults to the model's compiled loss.
        batch_size: Integer, the batch size for arrays. Defaults to 128.

    Returns:
        A list of float64 arrays shaped like the trainable weights.

    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> data = (np.ones((4, 1), "float32"), np.zeros((4, 1), "float32"))
    >>> [h.tolist() for h in hessian_vector_product(
    ...     model, data, [np.ones((1, 1)), np.zeros(1)], loss_fn="mse")]
    [[[2.0]], [2.0]]
    """
    stateless_loss.check_backend("hessian_vector_product")
    operator = HessianOperator(model, data, loss_fn, batch_size)
    if isinstance(vector, (list, tuple)):
        vector = stateless_loss.flatten(vector)
    product = operator.matvec(np.asarray(vector, dtype=np.float64))
    shapes = [tuple(w.shape) for w in operator._trainable]
    sizes = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
    return [p.reshape(s) for p, s in zip(np.split(product, sizes), shapes)]


def _positive_int(name: str, value) -> int:
    if int(value) != value or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def _random_unit(rng, dim: int, basis: np.ndarray) -> np.ndarray:
    """A random unit vector orthogonal to the rows of `basis`."""
    v = rng.standard_normal(dim)
    for _ in range(2):
        v -= basis.T @ (basis @ v)
    return v / np.linalg.norm(v)


def lanczos_tridiagonal(
    matvec: Callable[[np.ndarray], np.ndarray], dim: int, num_iters: int,
    seed: int = 0, verbose: int = 0,
) -> np.ndarray:
    """The Lanczos tridiagonal matrix of a symmetric operator.

    Full reorthogonalisation (Gram-Schmidt, twice, against every previous
    Lanczos vector) keeps the basis orthonormal, so the eigenvalues of the
    result are Rayleigh-Ritz values of the operator. When the Krylov space
    is exhausted (an invariant subspace), the iteration restarts from a new
    random vector orthogonal to the basis, so that repeated eigenvalues are
    found with their multiplicity; with `num_iters >= dim` the eigenvalues
    are those of the operator.

    Args:
        matvec: Callable mapping a float64 vector of size `dim` to the
            product of the symmetric operator with it.
        dim: Integer, the size of the vectors.
        num_iters: Integer >= 1, the number of products (capped at `dim`).
        seed: Integer seed of the starting vector. Defaults to 0.
        verbose: 0 (silent) or 1 (progress bar). Defaults to 0.

    Returns:
        The symmetric tridiagonal matrix, shape (num_iters, num_iters).

    >>> a = np.diag([3.0, 1.0, 2.0])
    >>> t = lanczos_tridiagonal(lambda v: a @ v, dim=3, num_iters=3)
    >>> np.linalg.eigvalsh(t).round(6).tolist()
    [1.0, 2.0, 3.0]

    References:
        Lanczos, "An iteration method for the solution of the eigenvalue
        problem of linear differential and integral operators", 1950;
        Ghorbani et al., "An Investigation into Neural Net Optimization via
        Hessian Eigenvalue Density", ICML 2019.
    """
    num_iters = min(_positive_int("num_iters", num_iters), int(dim))
    rng = np.random.default_rng(seed)
    basis = np.zeros((num_iters, dim))
    alphas, betas = np.zeros(num_iters), np.zeros(max(num_iters - 1, 0))
    progbar = keras.utils.Progbar(num_iters, verbose=verbose, unit_name="hvp")
    v, scale = _random_unit(rng, dim, basis[:0]), 0.0
    for j in range(num_iters):
        basis[j] = v
        w = np.asarray(matvec(v), dtype=np.float64)
        alphas[j] = v @ w
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        progbar.update(j + 1)
        if j == num_iters - 1:
            break
        beta = float(np.linalg.norm(w))
        scale = max(scale, abs(alphas[j]), beta)
        if beta <= BREAKDOWN_TOLERANCE * scale:
            v = _random_unit(rng, dim, basis[: j + 1])  # betas[j] stays 0
        else:
            betas[j], v = beta, w / beta
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


class HessianEigenvalues(NamedTuple):
    """Top Hessian eigenvalues, descending, and lambda_max / lambda_5."""

    eigenvalues: np.ndarray
    lambda_max: float
    lambda_ratio: float  # lambda_max / lambda_5; NaN with fewer than 5


def top_hessian_eigenvalues(
    model, data, k: int = 5, num_iters: int = 40, seed: int = 0, loss_fn=None,
    batch_size: int = 128, verbose: int = 0,
) -> HessianEigenvalues:
    """The k largest eigenvalues of the full-data loss Hessian, by Lanczos.

    Args:
        model: A built Keras model (not modified).
        data: Tuple of arrays or a batched `tf.data.Dataset`, see
            `HessianOperator`.
        k: Integer >= 1, the number of eigenvalues. Defaults to 5, which
            gives lambda_max / lambda_5.
        num_iters: Integer >= k, Lanczos iterations, each one Hessian-vector
            product over the whole data set; the top few eigenvalues
            converge first. Defaults to 40.
        seed: Integer seed of the starting vector. Defaults to 0.
        loss_fn: Optional loss; defaults to the model's compiled loss.
        batch_size: Integer, the batch size for arrays. Defaults to 128.
        verbose: 0 (silent) or 1 (progress bar). Defaults to 0.

    Returns:
        `HessianEigenvalues(eigenvalues, lambda_max, lambda_ratio)`.

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> data = (np.eye(2, dtype="float32"), np.zeros((2, 1), "float32"))
    >>> result = top_hessian_eigenvalues(model, data, k=1, loss_fn="mse")
    >>> round(result.lambda_max, 4)  # of 2/n [x 1]'[x 1] (kernel and bias)
    3.0

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021, section 4.2 (lambda_max and
        lambda_max / lambda_5 of SGD- and SAM-trained models).
    """
    stateless_loss.check_backend("top_hessian_eigenvalues")
    if int(k) != k or k < 1 or num_iters < k:
        raise ValueError(
            "`k` must be a positive integer and `num_iters` >= k. Received: "
            f"k={k!r}, num_iters={num_iters!r}"
        )
    operator = HessianOperator(model, data, loss_fn, batch_size)
    tridiagonal = lanczos_tridiagonal(
        operator.matvec, operator.dim, num_iters, seed, verbose
    )
    ritz = np.sort(np.linalg.eigvalsh(tridiagonal))[::-1][:k]
    ratio = float(ritz[0] / ritz[4]) if len(ritz) >= 5 else float("nan")
    return HessianEigenvalues(ritz, float(ritz[0]), ratio)


class HessianTrace(NamedTuple):
    """Hutchinson's trace estimate, its standard error and probe values."""

    trace: float
    std_error: float
    samples: np.ndarray


def hutchinson_trace(
    model, data, num_probes: int = 100, seed: int = 0, loss_fn=None,
    batch_size: int = 128, verbose: int = 0,
) -> HessianTrace:
    """Hutchinson's estimate of the trace of the full-data loss Hessian.

    The mean of z'Hz over `num_probes` Rademacher vectors z (entries +-1 with
    equal probability), an unbiased estimate of trace(H) with variance
    2 sum_{i != j} H_ij^2 per probe (exact when H is diagonal).

    Args:
        model: A built Keras model (not modified).
        data: Tuple of arrays or a batched `tf.data.Dataset`, see
            `HessianOperator`.
        num_probes: Integer >= 1, each one Hessian-vector product over the
            data set. Defaults to 100.
        seed: Integer seed of the probes. Defaults to 0.
        loss_fn: Optional loss; defaults to the model's compiled loss.
        batch_size: Integer, the batch size for arrays. Defaults to 128.
        verbose: 0 (silent) or 1 (progress bar). Defaults to 0.

    Returns:
        `HessianTrace(trace, std_error, samples)`; `std_error` is NaN with a
        single probe.

    >>> model = keras.Sequential(
    ...     [keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    >>> data = (np.eye(2, dtype="float32"), np.zeros((2, 1), "float32"))
    >>> round(hutchinson_trace(model, data, 10, loss_fn="mse").trace, 4)
    2.0

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence
        matrix for Laplacian smoothing splines", 1990; Yao et al.,
        "PyHessian: Neural Networks Through the Lens of the Hessian", 2020.
    """
    stateless_loss.check_backend("hutchinson_trace")
    num_probes = _positive_int("num_probes", num_probes)
    operator = HessianOperator(model, data, loss_fn, batch_size)
    rng = np.random.default_rng(seed)
    progbar = keras.utils.Progbar(num_probes, verbose=verbose, unit_name="hvp")
    samples = np.zeros(num_probes)
    for i in range(num_probes):
        z = rng.choice([-1.0, 1.0], size=operator.dim)
        samples[i] = z @ operator.matvec(z)
        progbar.update(i + 1)
    return HessianTrace(
        float(samples.mean()), stateless_loss.standard_error(samples), samples
    )
