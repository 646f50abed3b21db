"""What a rho search trains and scores on: a split held out before noise.

Foret et al. score rho on 10% of the training set held out as validation
data, and, with noisy labels, on a held-out set whose labels are clean
(appendix C.1): `prepare_search_data` splits first, then applies the noise
to the training part only.
"""

from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from keras_sam.noise import data as noise_data


class SearchData(NamedTuple):
    """What a search trains and scores on.

    `train` may carry noisy labels; `validation` is held out before the
    noise and stays clean. `noise` is what `label_noise` returned (e.g.
    `NoisyLabels`, with the clean labels and the corruption mask), or None.
    """

    train: noise_data.Split
    validation: noise_data.Split
    noise: Any


def prepare_search_data(
    x,
    y,
    *,
    validation_data: Optional[tuple] = None,
    validation_fraction: float = 0.1,
    label_noise: Optional[Callable] = None,
    seed: int = 0,
) -> SearchData:
    """Holds out a clean validation split, then adds noise to the rest.

    Args:
        x: Training inputs, examples along the first axis.
        y: Clean training labels: integers, or one-hot rows.
        validation_data: Optional `(x_val, y_val)` with clean labels; if
            None, `validation_fraction` of `(x, y)` is held out.
        validation_fraction: Float in (0, 1), the share held out. Defaults
            to 0.1 (Foret et al. section 3.1).
        label_noise: Optional `label_noise(labels)` returning noisy labels
            or a `NoisyLabels`, applied to the training part only.
        seed: Integer seed of the held-out split.

    Returns:
        A `SearchData`.

    >>> import numpy as np
    >>> data = prepare_search_data(np.zeros((20, 2)), np.arange(20) % 2)
    >>> len(data.train.y), len(data.validation.y)
    (18, 2)

    References:
        Foret et al. 2021, section 3.1 and appendix C.1.
    """
    train, validation = _held_out(
        np.asarray(x), np.asarray(y), validation_data, validation_fraction,
        seed,
    )
    noise = None
    if label_noise is not None:
        noise = label_noise(train.y)
        labels = np.asarray(getattr(noise, "labels", noise))
        if labels.shape != train.y.shape:
            raise ValueError(
                "`label_noise` must return one label per training example. "
                f"Received labels of shape {labels.shape} for "
                f"{train.y.shape}."
            )
        train = noise_data.Split(train.x, labels)
    return SearchData(train, validation, noise)


def _held_out(x, y, validation_data, validation_fraction, seed) -> tuple:
    """`(train, validation)` Splits: `validation_data`, or a held-out part."""
    if validation_data is not None:
        x_val, y_val = (np.asarray(a) for a in validation_data)
        if len(y_val) == 0 or len(x_val) != len(y_val):
            raise ValueError(
                "`validation_data` must hold matching, non-empty inputs and "
                f"labels to score rho on. Received {len(x_val)} inputs and "
                f"{len(y_val)} labels: pass held-out examples with clean "
                "labels, or validation_data=None to hold out "
                "`validation_fraction` of the training set."
            )
        return noise_data.Split(x, y), noise_data.Split(x_val, y_val)
    n_val = (
        int(round(validation_fraction * len(y)))
        if 0 < validation_fraction < 1
        else 0
    )
    if n_val == 0 or n_val >= len(y):
        raise ValueError(
            "`validation_fraction` must hold out at least one example and "
            f"leave some for training. Received: validation_fraction="
            f"{validation_fraction!r} of {len(y)} examples gives "
            f"{n_val} validation examples. Use a fraction in (0, 1) such "
            "as 0.1, more data, or pass `validation_data`."
        )
    return noise_data.clean_validation_split(
        x, y, fraction=validation_fraction, seed=seed
    )
