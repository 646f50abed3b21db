"""Loss landscapes: 1-D interpolations and filter-normalised random slices.

Three views of the loss around trained weights (Goodfellow et al. 2015;
Li et al. 2018; Keskar et al. 2017 compare sharp and flat minima this way):

- `interpolate`: L((1 - a) w1 + a w2) along the segment between two models
  of the same architecture (a = 0 is the first model, a = 1 the second).
- `random_slice_1d`: L(w + a d) along one random direction d.
- `random_slice_2d`: L(w + a d1 + b d2) on a grid, for contour and surface
  plots (see `keras_sam.diagnostics.plots`).

Random directions are filter-normalised (Li et al. section 4): each filter of
d (the weights feeding one output unit: `d[..., j]` of a Dense or Conv
kernel, whose last axis is the output axis in Keras) is rescaled to the norm
of the same filter of w, so that slices of networks with different weight
scales are comparable. Biases and normalisation parameters (1-D weights) are
zeroed by default, as Li et al. advise. Only trainable weights move;
non-trainable ones (BatchNormalization statistics) are kept. Everything is
evaluated with `stateless_call(..., training=False)`: the models' variables
are never modified. The losses need the TensorFlow backend (see
`stateless_loss.DatasetLoss`); on another backend the three views raise a
`RuntimeError` that says so. `filter_normalized_direction` is NumPy.
"""

from typing import NamedTuple, Optional, Sequence

import keras
import numpy as np

from keras_sam.diagnostics import stateless_loss

# Added to a direction filter's norm before dividing by it (Li et al.).
FILTER_EPSILON = 1e-10


class Curve(NamedTuple):
    """A 1-D landscape: the loss at each coordinate of `alphas`."""

    alphas: np.ndarray
    losses: np.ndarray


class Surface(NamedTuple):
    """A 2-D landscape: `losses[i, j]` is the loss at (alphas[i], betas[j])."""

    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray


def filter_normalized_direction(
    weights: Sequence[np.ndarray], seed=0, ignore_1d: bool = True
) -> list:
    """A Gaussian random direction with the filter norms of `weights`.

    Args:
        weights: List of weight arrays (the trainable weights of a model).
        seed: Integer seed or `np.random.Generator`. Defaults to 0.
        ignore_1d: Boolean; if True (default), 1-D weights (biases,
            normalisation scales and offsets) get a zero direction;
            otherwise their direction is the weight itself, as in Li et
            al.'s code.

    Returns:
        A list of float64 arrays shaped like `weights` in which every filter
        `d[..., j]` has the norm of `weights[k][..., j]`.

    >>> w = [np.array([[3.0, 0.0], [4.0, 1.0]]), np.ones(2)]
    >>> d = filter_normalized_direction(w)
    >>> np.linalg.norm(d[0], axis=0).round(6).tolist(), d[1].tolist()
    ([5.0, 1.0], [0.0, 0.0])

    References:
        Li et al., "Visualizing the Loss Landscape of Neural Nets",
        NeurIPS 2018, section 4 (filter-wise normalisation).
    """
    rng = np.random.default_rng(seed)
    direction = []
    for w in weights:
        w = np.asarray(w, dtype=np.float64)
        d = rng.standard_normal(w.shape)
        if w.ndim <= 1:
            direction.append(np.zeros_like(w) if ignore_1d else w.copy())
            continue
        axes = tuple(range(w.ndim - 1))  # all but the output axis
        w_norm = np.sqrt(np.sum(w**2, axis=axes, keepdims=True))
        d_norm = np.sqrt(np.sum(d**2, axis=axes, keepdims=True))
        direction.append(d * w_norm / (d_norm + FILTER_EPSILON))
    return direction


def _coordinates(values, name, default):
    values = np.asarray(default if values is None else values, np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D sequence of coordinates. "
            f"Received an array of shape {values.shape}."
        )
    return values


def _layer_non_trainables(model) -> list:
    """Non-trainable variables owned by layers (not by the model itself)."""
    seen, variables = set(), []
    for layer in model.layers:
        for v in layer.non_trainable_variables:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
    return variables


def _check_same_architecture(a, b, kind):
    shapes_a = [tuple(v.shape) for v in a]
    shapes_b = [tuple(v.shape) for v in b]
    if shapes_a != shapes_b:
        raise ValueError(
            f"The two models must have the same architecture, but their "
            f"{kind} weights differ: {shapes_a} vs {shapes_b}. Interpolate "
            "between two trainings of the same model."
        )


def _non_trainable_mixer(model_a, model_b, loss):
    """A function of `a`: model_a's non-trainable values at a.

    The layers' floating ones (BatchNormalization statistics) are mixed as
    `(1 - a) v_a + a v_b`; the others keep model_a's value.
    """
    layers_a = _layer_non_trainables(model_a)
    layers_b = _layer_non_trainables(model_b)
    _check_same_architecture(layers_a, layers_b, "non-trainable")
    pairs = {id(va): vb for va, vb in zip(layers_a, layers_b)}

    def mix(a):
        values = []
        for v, value in zip(
            model_a.non_trainable_variables, loss.non_trainable
        ):
            other = pairs.get(id(v))
            if other is not None and keras.backend.is_float_dtype(
                value.dtype
            ):
                value = keras.ops.cast(
                    (1.0 - a) * np.asarray(v, np.float64)
                    + a * np.asarray(other, np.float64),
                    value.dtype,
                )
            values.append(value)
        return values

    return mix


def interpolate(
    model_a, model_b, data, alphas=None, loss_fn=None, batch_size: int = 128,
    verbose: int = 0,
) -> Curve:
    """The loss along the segment L((1 - a) w_a + a w_b) between two models.

    Trainable weights and the layers' floating non-trainable weights
    (BatchNormalization statistics) are interpolated, paired in order;
    anything else (e.g. a `SAMModel`'s rho) keeps `model_a`'s value. At
    a = 0 and a = 1 the weights are exactly those of each model.

    Args:
        model_a: A built Keras model, a = 0; its loss and structure are used.
        model_b: A model of the same architecture, a = 1 (it may be a plain
            `keras.Model` where `model_a` is a `SAMModel`, or vice versa).
        data: Tuple `(x, y)` or `(x, y, sample_weight)` of arrays, or a
            batched `tf.data.Dataset`.
        alphas: 1-D sequence of coordinates. Defaults to 31 points in
            [-0.5, 1.5].
        loss_fn: Optional loss; defaults to `model_a`'s compiled loss.
        batch_size: Integer, the batch size for arrays. Defaults to 128.
        verbose: 0 (silent) or 1 (progress bar). Defaults to 0.

    Returns:
        A `Curve(alphas, losses)`.

    >>> a = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> b = keras.models.clone_model(a)
    >>> a.set_weights([np.zeros((1, 1)), np.zeros(1)])
    >>> b.set_weights([np.ones((1, 1)), np.zeros(1)])
    >>> data = (np.ones((2, 1), "float32"), np.zeros((2, 1), "float32"))
    >>> interpolate(a, b, data, [0, 0.5, 1], loss_fn="mse").losses.tolist()
    [0.0, 0.25, 1.0]

    References:
        Goodfellow et al., "Qualitatively characterizing neural network
        optimization problems", ICLR 2015; Keskar et al., "On Large-Batch
        Training for Deep Learning", ICLR 2017, section 3 (figure 3).
    """
    stateless_loss.check_backend("interpolate")
    alphas = _coordinates(alphas, "alphas", np.linspace(-0.5, 1.5, 31))
    loss = stateless_loss.DatasetLoss(model_a, data, loss_fn, batch_size)
    _check_same_architecture(
        model_a.trainable_variables, model_b.trainable_variables, "trainable"
    )
    mix_non_trainable = _non_trainable_mixer(model_a, model_b, loss)
    w_a = [np.asarray(v, np.float64) for v in model_a.trainable_variables]
    w_b = [np.asarray(v, np.float64) for v in model_b.trainable_variables]
    progbar = keras.utils.Progbar(len(alphas), verbose=verbose)
    losses = []
    for i, a in enumerate(alphas):
        trainable = [(1.0 - a) * wa + a * wb for wa, wb in zip(w_a, w_b)]
        losses.append(loss(trainable, mix_non_trainable(a)))
        progbar.update(i + 1)
    return Curve(alphas, np.array(losses))


def random_slice_1d(
    model, data, alphas=None, direction: Optional[list] = None, seed=0,
    ignore_1d: bool = True, loss_fn=None, batch_size: int = 128,
    verbose: int = 0,
) -> Curve:
    """The loss L(w + a d) along a filter-normalised random direction d.

    Args:
        model: A built Keras model (not modified).
        data: Tuple of arrays or a batched `tf.data.Dataset`.
        alphas: 1-D sequence of coordinates. Defaults to 41 points in
            [-1, 1].
        direction: Optional list of arrays shaped like the trainable
            weights; defaults to `filter_normalized_direction(weights,
            seed, ignore_1d)`.
        seed: Integer seed or `np.random.Generator`. Defaults to 0.
        ignore_1d: Boolean, see `filter_normalized_direction`.
        loss_fn: Optional loss; defaults to the compiled loss.
        batch_size: Integer, the batch size for arrays. Defaults to 128.
        verbose: 0 (silent) or 1 (progress bar). Defaults to 0.

    Returns:
        A `Curve(alphas, losses)`.

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> data = (np.ones((4, 2), "float32"), np.ones((4, 1), "float32"))
    >>> len(random_slice_1d(model, data, [-1, 0, 1], loss_fn="mse").losses)
    3

    References:
        Li et al., "Visualizing the Loss Landscape of Neural Nets",
        NeurIPS 2018, sections 3-4.
    """
    stateless_loss.check_backend("random_slice_1d")
    alphas = _coordinates(alphas, "alphas", np.linspace(-1.0, 1.0, 41))
    loss = stateless_loss.DatasetLoss(model, data, loss_fn, batch_size)
    weights = [np.asarray(w, np.float64) for w in loss.trainable]
    (d,) = _directions(weights, [direction], seed, ignore_1d)
    progbar = keras.utils.Progbar(len(alphas), verbose=verbose)
    losses = []
    for i, a in enumerate(alphas):
        losses.append(loss([w + a * u for w, u in zip(weights, d)]))
        progbar.update(i + 1)
    return Curve(alphas, np.array(losses))


def _directions(weights, directions, seed, ignore_1d, count=1) -> list:
    """`count` given directions, checked, with each None drawn at random."""
    if len(directions) != count:
        raise ValueError(
            "`directions` must be a pair [d1, d2] (or None). Received "
            f"{len(directions)} directions."
        )
    rng = np.random.default_rng(seed)
    result = []
    for k, d in enumerate(directions):
        if d is None:
            d = filter_normalized_direction(weights, rng, ignore_1d)
        else:
            _check_same_architecture(weights, d, f"direction {k + 1}")
        result.append([np.asarray(t, np.float64) for t in d])
    return result


def random_slice_2d(
    model, data, alphas=None, betas=None, directions: Optional[list] = None,
    seed=0, ignore_1d: bool = True, loss_fn=None, batch_size: int = 128,
    verbose: int = 0,
) -> Surface:
    """The loss L(w + a d1 + b d2) on a grid of two random directions.

    Args: `model`, `data`, `seed`, `ignore_1d`, `loss_fn`, `batch_size` and
    `verbose` as in `random_slice_1d`, and:
        alphas: 1-D sequence of coordinates along d1. Defaults to 21
            points in [-1, 1].
        betas: 1-D sequence of coordinates along d2. Defaults to `alphas`.
        directions: Optional pair `[d1, d2]` of lists of arrays shaped like
            the trainable weights; defaults to two directions drawn with
            `filter_normalized_direction` from one generator seeded `seed`.

    Returns:
        A `Surface(alphas, betas, losses)` with `losses` of shape
        `(len(alphas), len(betas))`.

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> data = (np.ones((4, 2), "float32"), np.ones((4, 1), "float32"))
    >>> random_slice_2d(model, data, [-1, 0, 1], loss_fn="mse").losses.shape
    (3, 3)

    References:
        Li et al., "Visualizing the Loss Landscape of Neural Nets",
        NeurIPS 2018, sections 3-4 (contour and surface plots).
    """
    stateless_loss.check_backend("random_slice_2d")
    alphas = _coordinates(alphas, "alphas", np.linspace(-1.0, 1.0, 21))
    betas = _coordinates(betas, "betas", alphas)
    loss = stateless_loss.DatasetLoss(model, data, loss_fn, batch_size)
    weights = [np.asarray(w, np.float64) for w in loss.trainable]
    directions = [None, None] if directions is None else directions
    d1, d2 = _directions(weights, directions, seed, ignore_1d, count=2)
    progbar = keras.utils.Progbar(len(alphas) * len(betas), verbose=verbose)
    losses = np.zeros((len(alphas), len(betas)))
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            losses[i, j] = loss(
                [w + a * u + b * v for w, u, v in zip(weights, d1, d2)]
            )
            progbar.update(i * len(betas) + j + 1)
    return Surface(alphas, betas, losses)
