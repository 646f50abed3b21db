"""Label noise for robustness studies, with a record of what was corrupted.

Every function returns `NoisyLabels`: the noisy labels, the clean labels and
a boolean `is_noisy` mask, so that training accuracy can be reported on the
clean and on the noisy subset separately (Baek et al. 2024, figures 1-2).
"""

from typing import NamedTuple, Optional

import numpy as np


class NoisyLabels(NamedTuple):
    """Noisy `labels`, the `clean` labels, and the `is_noisy` mask."""

    labels: np.ndarray
    clean: np.ndarray
    is_noisy: np.ndarray


def _check_labels(labels, num_classes: Optional[int]) -> tuple:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "`labels` must be a 1-D array of integer class indices. "
            f"Received an array of shape {labels.shape} and dtype {labels.dtype}."
        )
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}). Received labels in "
            f"[{labels.min()}, {labels.max()}]."
        )
    return labels, num_classes


def symmetric_noise(
    labels, rate: float, num_classes: Optional[int] = None, seed: int = 0
) -> NoisyLabels:
    """Symmetric ("blue") label noise at `rate`.

    Exactly `round(rate * n)` examples, chosen uniformly, get a label drawn
    uniformly from the *other* classes, so every corrupted label is wrong.

    Args:
        labels: 1-D integer array of clean labels.
        rate: Float in [0, 1], the fraction of labels to corrupt.
        num_classes: Integer, number of classes; defaults to max label + 1.
        seed: Integer seed; the same seed gives the same noisy labels.

    Returns:
        `NoisyLabels`.

    >>> noisy = symmetric_noise(np.arange(10) % 5, rate=0.4, seed=1)
    >>> int(noisy.is_noisy.sum()), bool((noisy.labels != noisy.clean).sum() == 4)
    (4, True)

    References:
        Baek et al., "Why is SAM Robust to Label Noise?", ICLR 2024,
        appendix A.1; Foret et al. 2021, section 3.3.
    """
    labels, num_classes = _check_labels(labels, num_classes)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"`rate` must be in [0, 1]. Received: rate={rate}")
    if num_classes < 2:
        raise ValueError(
            f"Symmetric noise needs at least 2 classes. Received: {num_classes}"
        )
    rng = np.random.default_rng(seed)
    n_noisy = int(round(rate * len(labels)))
    corrupted = rng.choice(len(labels), size=n_noisy, replace=False)
    # An offset in [1, num_classes) moves each label to a different class,
    # uniformly over the other classes.
    offsets = rng.integers(1, num_classes, size=n_noisy)
    noisy = labels.copy()
    noisy[corrupted] = (labels[corrupted] + offsets) % num_classes
    is_noisy = np.zeros(len(labels), dtype=bool)
    is_noisy[corrupted] = True
    return NoisyLabels(noisy, labels.copy(), is_noisy)
