"""A model's loss at any weight values, over a whole data set, statelessly.

The one setup every diagnostic shares (Hessian, sharpness, landscapes and
the tools that plot them). They evaluate L(w') at weights w' that are not
the model's own (w + eps, w + a d1 + b d2, (1 - a) w1 + a w2) and
differentiate it once or twice. `StatelessLoss` does this with

    y_pred = model.stateless_call(trainable, non_trainable, x, training=False)

so no variable is ever assigned, BatchNormalization uses its moving
statistics and dropout is off. The loss of a whole data set is the mean of
the batch losses weighted by batch size, as `model.evaluate` reports it (each
batch loss being a mean over its examples), so the gradient and the Hessian
of the full-data loss are the same weighted means of the batch ones.

`StatelessLoss` is backend-neutral (`keras.ops`): on JAX or PyTorch it is
the loss to hand to `jax.grad` or `torch.func`. The rest (the data set
pipeline in `tf.data`, gradients by `tf.GradientTape` in `tf.function`)
needs the TensorFlow backend; `check_backend` says so on another one.
"""

from typing import Sequence

import keras

import numpy as np

from keras_sam import _keras
from keras_sam import _optional

# Imported at first use: the module imports on every backend.
tf = _optional.LazyTensorFlow("keras_sam.diagnostics")

# Why the diagnostics other than `StatelessLoss` need TensorFlow's backend.
TENSORFLOW_ONLY = (
    "it batches data with tf.data and differentiates with tf.GradientTape "
    "inside tf.function"
)


def check_backend(feature: str) -> None:
    """Raises a `RuntimeError` unless Keras runs on TensorFlow.

    Args:
        feature: String, the diagnostic's name (e.g. "m_sharpness").
    """
    _optional.check_tensorflow_backend(
        f"keras_sam.diagnostics.{feature}", TENSORFLOW_ONLY
    )


def as_dataset(data, batch_size: int = 128):
    """Batches of `(x, y)` or `(x, y, sample_weight)` from arrays or a dataset.

    Args:
        data: A tuple `(x, y)` or `(x, y, sample_weight)` of arrays (the
            examples along the first axis), or a batched `tf.data.Dataset`
            of such tuples, returned as it is.
        batch_size: Integer > 0, the batch size used for arrays.
            Defaults to 128.

    Returns:
        A `tf.data.Dataset` of batches.

    >>> ds = as_dataset((np.zeros((5, 2)), np.zeros(5)), batch_size=2)
    >>> [int(x.shape[0]) for x, y in ds]
    [2, 2, 1]
    """
    if isinstance(data, tf.data.Dataset):
        return data
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise ValueError(
            "`data` must be a tuple (x, y) or (x, y, sample_weight) of "
            "arrays, or a batched tf.data.Dataset of such tuples. Received: "
            f"data of type {type(data).__name__}"
            + (f" with {len(data)} items" if isinstance(data, (tuple, list))
               else "")
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: "
            f"batch_size={batch_size!r}"
        )
    lengths = {len(a) for a in tf.nest.flatten(tuple(data))}
    if len(lengths) != 1:
        raise ValueError(
            "The arrays of `data` must all have the same number of "
            f"examples. Received lengths {sorted(lengths)}."
        )
    return tf.data.Dataset.from_tensor_slices(tuple(data)).batch(
        int(batch_size)
    )


def batch_size_of(x):
    """The number of examples of a (possibly nested) input batch `x`."""
    return tf.shape(tf.nest.flatten(x)[0])[0]


def flatten(tensors: Sequence) -> np.ndarray:
    """Concatenates tensors or arrays into one flat float64 NumPy vector.

    >>> flatten([np.ones((2, 2)), np.zeros(1)]).tolist()
    [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    return np.concatenate(
        [np.asarray(t, dtype=np.float64).reshape(-1) for t in tensors]
    )


def unflatten(vector, like: Sequence) -> list:
    """Splits a flat vector into tensors shaped and typed like `like`.

    >>> w = [tf.zeros((2, 2)), tf.zeros(1)]
    >>> [tuple(t.shape) for t in unflatten(np.arange(5.0), w)]
    [(2, 2), (1,)]
    """
    vector = tf.convert_to_tensor(vector)
    sizes = [int(np.prod(t.shape)) for t in like]
    if int(vector.shape[0]) != sum(sizes):
        raise ValueError(
            f"The vector has {int(vector.shape[0])} entries but the weights "
            f"have {sum(sizes)}: pass a vector of the model's trainable size."
        )
    parts = tf.split(vector, sizes)
    return [
        tf.cast(tf.reshape(p, t.shape), t.dtype) for p, t in zip(parts, like)
    ]


def _resolve_loss_fn(model, loss_fn):
    """The explicit loss as `f(y, y_pred, sample_weight)`, or None."""
    if loss_fn is None:
        if not getattr(model, "compiled", False) or model.loss is None:
            raise ValueError(
                f"Model {model.name!r} has no compiled loss and no "
                "`loss_fn` was given: pass `loss_fn=` (a keras.losses.Loss, "
                "a loss name or a callable (y_true, y_pred)), or "
                "`model.compile(loss=...)` first."
            )
        return None
    if isinstance(loss_fn, str):
        loss_fn = keras.losses.get(loss_fn)
    if isinstance(loss_fn, keras.losses.Loss):
        return loss_fn
    if not callable(loss_fn):
        raise ValueError(
            "`loss_fn` must be a keras.losses.Loss, a loss name or a "
            f"callable (y_true, y_pred). Received: loss_fn={loss_fn!r}"
        )

    def mean_loss(y, y_pred, sample_weight=None):
        # The "sum_over_batch_size" reduction of Keras losses.
        ops = keras.ops
        values = ops.convert_to_tensor(loss_fn(y, y_pred))
        if sample_weight is not None:
            weight = ops.cast(sample_weight, values.dtype)
            while ops.ndim(weight) < ops.ndim(values):
                weight = ops.expand_dims(weight, -1)
            values = values * weight
        return ops.sum(values) / ops.cast(ops.size(values), values.dtype)

    return mean_loss


class StatelessLoss:
    """The loss of `model` as a pure function of its weight values.

    Backend-neutral: it runs on TensorFlow, JAX and PyTorch.

    Args:
        model: A built Keras model (compiled or not).
        loss_fn: Optional `keras.losses.Loss`, loss name, or callable
            `(y_true, y_pred)` returning per-example losses (reduced by the
            mean, weighted by any sample weights). Defaults to None: the
            model's compiled loss, including regularisation losses, exactly
            as `model.evaluate` computes it.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> f = StatelessLoss(model, loss_fn="mse")
    >>> trainable, non_trainable = f.values()
    >>> x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
    >>> loss = f(trainable, non_trainable, x, y)
    >>> tuple(loss.shape)
    ()
    """

    def __init__(self, model, loss_fn=None):
        if not isinstance(model, keras.Model):
            raise ValueError(
                "`model` must be a keras.Model. Received: "
                f"model of type {type(model).__name__}"
            )
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} is not built: call it on a batch or "
                "build it with `model.build(input_shape)` first."
            )
        self.model = model
        self._loss_fn = _resolve_loss_fn(model, loss_fn)

    def values(self) -> tuple:
        """The model's current (trainable, non-trainable) values as tensors."""
        # Snapshots (copies), not references to the variables.
        copy = keras.ops.copy
        return (
            [copy(v.value) for v in self.model.trainable_variables],
            [copy(v.value) for v in self.model.non_trainable_variables],
        )

    def __call__(self, trainable, non_trainable, x, y, sample_weight=None):
        """The mean loss of the batch `(x, y, sample_weight)` at the values."""
        model = self.model
        y_pred, _, losses = model.stateless_call(
            trainable, non_trainable, x, training=False, return_losses=True
        )
        if self._loss_fn is not None:
            return self._loss_fn(y, y_pred, sample_weight)
        # As model.evaluate: compiled loss + the forward pass's own losses
        # (activity regularisers, add_loss) + weight regularisers, the
        # latter evaluated at `trainable` inside the stateless scope.
        with _keras.losses_overridden(model, losses):
            loss, _ = model.stateless_compute_loss(
                trainable,
                non_trainable,
                [v.value for v in model.metrics_variables],
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=False,
            )
        return loss


def loss_and_gradient(loss, trainable, non_trainable, x, y, sample_weight):
    """`(L, dL/dw)` of one batch at the values `trainable` (zeros if unused).

    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> f = StatelessLoss(model, loss_fn="mse")
    >>> w = [tf.ones((1, 1)), tf.zeros(1)]
    >>> x, y = tf.ones((2, 1)), tf.zeros((2, 1))
    >>> value, grads = loss_and_gradient(f, w, [], x, y, None)
    >>> float(value), [g.numpy().ravel().tolist() for g in grads]
    (1.0, [[2.0], [2.0]])
    """
    check_backend("loss_and_gradient")
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(trainable)
        value = loss(trainable, non_trainable, x, y, sample_weight)
    grads = tape.gradient(
        value, trainable, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return value, grads


def unpack(batch) -> tuple:
    """`(x, y, sample_weight)` of a dataset element; `y` must be present."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
    if y is None:
        raise ValueError(
            "The data must hold targets: tuples (x, y) or "
            "(x, y, sample_weight). Received batches of inputs only."
        )
    return x, y, sample_weight


def weighted_mean(batch_fn, dataset) -> list:
    """Batch-size-weighted mean of `batch_fn(x, y, sample_weight)` over data.

    Args:
        batch_fn: Callable returning a list of tensors for one batch (a
            mean over the batch's examples: a loss, its gradient, ...).
        dataset: A batched `tf.data.Dataset` (see `as_dataset`).

    Returns:
        The list of float64 NumPy arrays sum_b n_b f_b / sum_b n_b.

    >>> ds = as_dataset((np.arange(3.0), np.zeros(3)), batch_size=2)
    >>> weighted_mean(lambda x, y, w: [tf.reduce_mean(x)], ds)[0].item()
    1.0
    """
    totals, count = None, 0
    for batch in dataset:
        x, y, sample_weight = unpack(batch)
        n = int(batch_size_of(x))
        values = [
            np.asarray(v, dtype=np.float64) * n
            for v in batch_fn(x, y, sample_weight)
        ]
        totals = values if totals is None else [
            t + v for t, v in zip(totals, values)
        ]
        count += n
    if count == 0:
        raise ValueError("`data` is empty: it yielded no examples.")
    return [t / count for t in totals]


def standard_error(samples: np.ndarray) -> float:
    """The standard error of the mean of `samples`; NaN with one sample.

    >>> standard_error(np.array([1.0, 3.0]))
    1.0
    """
    if len(samples) < 2:
        return float("nan")
    return float(np.std(samples, ddof=1) / np.sqrt(len(samples)))


class DatasetLoss:
    """The full-data loss of a model at any weight values: the shared setup.

    Holds the `StatelessLoss`, the batched data set and the model's values
    at construction (`trainable`, `non_trainable`); calling it returns the
    batch-size-weighted mean loss at other values, as `model.evaluate`.

    Args:
        model: A built Keras model (not modified).
        data: Tuple `(x, y)` or `(x, y, sample_weight)` of arrays, or a
            batched `tf.data.Dataset` (see `as_dataset`).
        loss_fn: Optional loss (see `StatelessLoss`); defaults to the
            model's compiled loss.
        batch_size: Integer, the batch size for arrays. Defaults to 128.

    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> model.set_weights([np.ones((1, 1)), np.zeros(1)])
    >>> data = (np.ones((3, 1), "float32"), np.zeros((3, 1), "float32"))
    >>> loss = DatasetLoss(model, data, loss_fn="mse")
    >>> loss(loss.trainable), loss([np.full((1, 1), 2.0), np.zeros(1)])
    (1.0, 4.0)
    """

    def __init__(self, model, data, loss_fn=None, batch_size: int = 128):
        check_backend(type(self).__name__)
        self.loss = StatelessLoss(model, loss_fn)
        self.dataset = as_dataset(data, batch_size)
        self.trainable, self.non_trainable = self.loss.values()
        self.dim = int(sum(int(np.prod(w.shape)) for w in self.trainable))
        self._batch_loss = tf.function(self.loss, reduce_retracing=True)

    def __call__(self, trainable, non_trainable=None) -> float:
        """The full-data loss at `trainable` (and `non_trainable`) values."""
        trainable = [
            tf.cast(t, w.dtype) for t, w in zip(trainable, self.trainable)
        ]
        if non_trainable is None:
            non_trainable = self.non_trainable
        (loss,) = weighted_mean(
            lambda x, y, sw: [
                self._batch_loss(trainable, non_trainable, x, y, sw)
            ],
            self.dataset,
        )
        return float(loss)


def evaluate_loss(model, data, loss_fn=None, batch_size: int = 128) -> float:
    """The full-data loss of `model` at its weights, as `model.evaluate`.

    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> model.set_weights([np.ones((1, 1)), np.zeros(1)])
    >>> data = (np.ones((3, 1), "float32"), np.zeros((3, 1), "float32"))
    >>> evaluate_loss(model, data, loss_fn="mse")
    1.0
    """
    check_backend("evaluate_loss")
    loss = DatasetLoss(model, data, loss_fn, batch_size)
    return loss(loss.trainable)
