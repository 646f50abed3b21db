"""The example data set of the docs and tests: scikit-learn's digits.

`load_digits` gives scikit-learn's 1,797 real 8x8 handwritten digits (they
ship inside scikit-learn, so nothing is downloaded), split into a stratified
train and test set (the `data` extra), each a `keras_sam.noise.data.Split`.
"""

from typing import NamedTuple

from keras_sam import _optional
from keras_sam.noise.data import Split


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
