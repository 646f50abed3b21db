"""Label noise on data sets: a clean validation split, then noisy labels.

`clean_validation_split` holds out part of a training set before any label
noise is applied, so that a rho search validates on clean labels (Foret et
al. appendix C.1). `noisy_dataset` applies noise to a `tf.data` pipeline
and checks, element by element, that the order the noise was drawn in
still holds; it needs TensorFlow installed (for `tf.data`), on any Keras
backend, and imports it when called.
"""

from typing import NamedTuple

import numpy as np

from keras_sam import _optional
from keras_sam.noise.labels import NoisyLabels

_NEEDS_TENSORFLOW = "keras_sam.noise.noisy_dataset (tf.data)"
# Imported at first use (`noisy_dataset`): the module imports without it.
tf = _optional.LazyTensorFlow(_NEEDS_TENSORFLOW)


class Split(NamedTuple):
    """Arrays of one data set split: inputs `x` and integer labels `y`."""

    x: np.ndarray
    y: np.ndarray


def clean_validation_split(
    x: np.ndarray, y: np.ndarray, fraction: float = 0.1, seed: int = 0
) -> tuple:
    """Holds out a random `fraction` of a training set as validation data.

    Call it on the clean labels, before adding label noise to the returned
    training part: the validation labels then stay clean.

    Args:
        x: Array of inputs, examples along the first axis.
        y: Array of labels aligned with `x`.
        fraction: Float in (0, 1), the share held out. Defaults to 0.1
            (Foret et al. section 3.1).
        seed: Integer seed of the permutation. Defaults to 0.

    Returns:
        `(train, validation)`, two `Split` tuples.

    >>> x, y = np.arange(20).reshape(10, 2), np.arange(10)
    >>> train, val = clean_validation_split(x, y, fraction=0.2)
    >>> len(train.y), len(val.y)
    (8, 2)
    """
    if len(x) != len(y):
        raise ValueError(
            f"`x` and `y` must have the same length. Received: {len(x)} "
            f"inputs and {len(y)} labels."
        )
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"`fraction` must be in (0, 1). Received: fraction={fraction}"
        )
    n_val = int(round(fraction * len(y)))
    if n_val == 0 or n_val == len(y):
        raise ValueError(
            f"fraction={fraction} of {len(y)} examples leaves an empty "
            "training or validation split: use more data or another fraction."
        )
    order = np.random.default_rng(seed).permutation(len(y))
    val, train = order[:n_val], order[n_val:]
    return Split(x[train], y[train]), Split(x[val], y[val])


def noisy_dataset(dataset, noise):
    """Applies label noise to a `tf.data` dataset of (x, y) pairs.

    The dataset is read once to collect its labels (it must be finite,
    unbatched, and yield examples in the same order on every pass: apply
    noise before `shuffle`/`batch`, and load tfds data with
    `as_supervised=True, shuffle_files=False`). The returned dataset yields
    `(x, noisy_y)`; each element checks that the dataset still gives the
    clean label it had when the noise was drawn, and fails if the order
    changed. It needs TensorFlow installed, whatever Keras' backend.

    Args:
        dataset: A `tf.data.Dataset` of `(x, y)` with scalar integer `y`.
        noise: A callable `labels -> NoisyLabels` (e.g.
            `lambda y: symmetric_noise(y, 0.4, seed=0)`), or a
            `NoisyLabels` aligned with the dataset.

    Returns:
        `(noisy_dataset, noisy_labels)`: the dataset of `(x, noisy_y)` and
        the `NoisyLabels` record (with `is_noisy`) in dataset order.

    >>> from keras_sam.noise import symmetric_noise
    >>> ds = tf.data.Dataset.from_tensor_slices(([[0.], [1.]], [0, 1]))
    >>> ds, record = noisy_dataset(ds, lambda y: symmetric_noise(y, 1.0))
    >>> [int(y) for _, y in ds], record.is_noisy.tolist()
    ([1, 0], [True, True])

    References:
        Baek et al. 2024, appendix A.1; Foret et al. 2021, section 3.3.
    """
    _optional.import_tensorflow(_NEEDS_TENSORFLOW)  # first: says what to add
    clean = _clean_labels(dataset)
    record = noise(clean) if callable(noise) else noise
    if not isinstance(record, NoisyLabels):
        raise ValueError(
            "`noise` must be a NoisyLabels or return one. Received: "
            f"{type(record).__name__}"
        )
    if len(record.labels) != len(clean) or np.any(record.clean != clean):
        raise ValueError(
            f"The noise record has {len(record.labels)} labels whose clean "
            f"labels do not match the dataset's {len(clean)} labels in "
            "order: build it from this dataset's labels."
        )
    extra = tf.data.Dataset.from_tensor_slices(
        (record.labels.astype(clean.dtype), clean)
    )
    return tf.data.Dataset.zip((dataset, extra)).map(_replace_label), record


def _clean_labels(dataset) -> np.ndarray:
    """The labels of a finite dataset of `(x, scalar int y)`, in order."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            "`dataset` must yield (x, y) pairs; load tfds data with "
            f"`as_supervised=True`. Received elements of spec {spec}."
        )
    y_spec = spec[1]
    if (
        not isinstance(y_spec, tf.TensorSpec)
        or y_spec.shape.rank != 0
        or not y_spec.dtype.is_integer
    ):
        raise ValueError(
            "`dataset` must yield scalar integer labels: apply the noise "
            f"before `batch()` and before one-hot encoding. Received y spec "
            f"{y_spec}."
        )
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "`dataset` is infinite: apply the noise before `repeat()`."
        )
    return np.fromiter(
        dataset.map(lambda x, y: y).as_numpy_iterator(),
        dtype=y_spec.dtype.as_numpy_dtype,
    )


def _replace_label(pair, labels):
    """`(x, noisy_y)`, once the dataset's `y` is checked against `clean_y`."""
    (x, y), (noisy_y, clean_y) = pair, labels
    check = tf.debugging.assert_equal(
        y,
        clean_y,
        message="noisy_dataset: the dataset's order changed since the "
        "noise was drawn (reshuffled or shuffled files); apply noise to "
        "a deterministic dataset, before shuffle().",
    )
    with tf.control_dependencies([check]):
        return x, tf.identity(noisy_y)
