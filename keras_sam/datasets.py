"""Data for the experiments: the embedded digits set and a clean split.

`load_digits` gives scikit-learn's 1,797 real 8x8 handwritten digits (they
ship inside scikit-learn, so nothing is downloaded), split into a stratified
train and test set. `clean_validation_split` holds out part of a training set
before any label noise is applied, so that a rho search validates on clean
labels (Foret et al. appendix C.1).
"""

from typing import NamedTuple

import numpy as np

from keras_sam import _optional


class Split(NamedTuple):
    """Arrays of one data set split: inputs `x` and integer labels `y`."""

    x: np.ndarray
    y: np.ndarray


class Digits(NamedTuple):
    """The digits data set: `train` and `test` splits, and `num_classes`."""

    train: Split
    test: Split
    num_classes: int


def load_digits(
    test_fraction: float = 0.25, image: bool = False, seed: int = 0
) -> Digits:
    """scikit-learn's digits, scaled to [0, 1], in a stratified split.

    Args:
        test_fraction: Float in (0, 1), the share of examples kept for the
            test set. Defaults to 0.25.
        image: Boolean; if True, inputs have shape (8, 8, 1) for
            convolutional models, else (64,). Defaults to False.
        seed: Integer seed of the split. Defaults to 0.

    Returns:
        A `Digits` tuple of float32 inputs and int32 labels.

    >>> data = load_digits()
    >>> data.train.x.shape, data.test.x.shape, data.num_classes
    ((1347, 64), (450, 64), 10)
    """
    feature = "keras_sam.datasets.load_digits"
    datasets = _optional.require("sklearn.datasets", "data", feature)
    model_selection = _optional.require(
        "sklearn.model_selection", "data", feature
    )

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            "`test_fraction` must be in (0, 1). "
            f"Received: test_fraction={test_fraction}"
        )
    bunch = datasets.load_digits()
    x = (bunch.data / 16.0).astype("float32")
    y = bunch.target.astype("int32")
    if image:
        x = x.reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Digits(Split(x_train, y_train), Split(x_test, y_test), 10)


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
