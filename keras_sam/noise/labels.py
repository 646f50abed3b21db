"""Synthetic label noise, with a record of what was corrupted.

Every function returns `NoisyLabels`: the noisy labels, the clean labels and
a boolean `is_noisy` mask, so that training accuracy can be reported on the
clean and on the noisy subset separately (Baek et al. 2024, figures 1-2).
Symmetric ("blue") noise and class-conditional noise from a transition
matrix live here; `files` reads human ("red") noise, `data` applies any of
them to a `tf.data` pipeline.
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
            f"Received an array of shape {labels.shape} and dtype "
            f"{labels.dtype}."
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
    >>> changed = int((noisy.labels != noisy.clean).sum())
    >>> int(noisy.is_noisy.sum()), changed
    (4, 4)

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


def check_transition_matrix(matrix, atol: float = 1e-6) -> np.ndarray:
    """Validates a label transition matrix and returns it as float64.

    `matrix[i, j]` is the probability that an example of class i gets
    label j: it must be square, finite, non-negative, and each row must sum
    to 1 (within `atol`).

    >>> check_transition_matrix([[0.9, 0.1], [0.0, 1.0]]).shape
    (2, 2)
    """
    try:
        t = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            "`transition` must be a square matrix of probabilities. "
            f"Received: {matrix!r}"
        ) from None
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 2:
        raise ValueError(
            "`transition` must be a square (classes x classes) matrix with "
            f"at least 2 classes. Received shape {t.shape}."
        )
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(
            "`transition` must hold finite probabilities >= 0. Received "
            f"entries in [{np.nanmin(t)}, {np.nanmax(t)}] (NaN or inf: "
            f"{int(np.sum(~np.isfinite(t)))})."
        )
    sums = t.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if len(bad):
        raise ValueError(
            "Each row of `transition` must sum to 1 (row i is the label "
            f"distribution of class i). Rows {bad.tolist()[:10]} sum to "
            f"{sums[bad].tolist()[:10]}: normalise them, e.g. "
            "`t / t.sum(axis=1, keepdims=True)`."
        )
    return t


def symmetric_transition(num_classes: int, rate: float) -> np.ndarray:
    """The transition matrix of symmetric noise at `rate`.

    Each label stays with probability 1 - rate and moves to each other
    class with probability rate / (num_classes - 1).

    >>> symmetric_transition(3, 0.5)
    array([[0.5 , 0.25, 0.25],
           [0.25, 0.5 , 0.25],
           [0.25, 0.25, 0.5 ]])
    """
    _check_rate(rate)
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(
            "`num_classes` must be an integer >= 2. Received: "
            f"num_classes={num_classes!r}"
        )
    k = int(num_classes)
    t = np.full((k, k), rate / (k - 1))
    np.fill_diagonal(t, 1.0 - rate)
    return t


def pair_transition(
    num_classes: int, rate: float, mapping: Optional[dict] = None
) -> np.ndarray:
    """The transition matrix of asymmetric ("pair flip") noise.

    Class i keeps its label with probability 1 - rate and otherwise gets
    label `mapping[i]`; classes absent from `mapping` stay clean. The
    default mapping is i -> (i + 1) % num_classes. For CIFAR-10's classic
    asymmetric noise use {9: 1, 2: 0, 3: 5, 5: 3, 4: 7} (truck ->
    automobile, bird -> airplane, cat <-> dog, deer -> horse).

    >>> pair_transition(3, 0.2)[0]
    array([0.8, 0.2, 0. ])

    References:
        Patrini et al., "Making Deep Neural Networks Robust to Label Noise:
        a Loss Correction Approach", CVPR 2017 (class-conditional noise).
    """
    t = symmetric_transition(num_classes, 0.0)
    _check_rate(rate)
    k = len(t)
    if mapping is None:
        mapping = {i: (i + 1) % k for i in range(k)}
    for source, target in dict(mapping).items():
        if not (0 <= source < k and 0 <= target < k) or source == target:
            raise ValueError(
                "`mapping` must map classes in [0, num_classes) to other "
                f"classes. Received {source!r} -> {target!r} with "
                f"num_classes={k}."
            )
        t[source, source] = 1.0 - rate
        t[source, target] = rate
    return t


def _check_rate(rate):
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"`rate` must be in [0, 1]. Received: rate={rate}")


def transition_noise(labels, transition, seed: int = 0) -> NoisyLabels:
    """Class-conditional label noise drawn from a transition matrix.

    Each example of class i independently gets label j with probability
    `transition[i, j]`; `is_noisy` marks the labels that changed. The
    number of corrupted labels is random (unlike `symmetric_noise`, whose
    count is exact).

    Args:
        labels: 1-D integer array of clean labels in [0, classes).
        transition: (classes x classes) matrix, rows summing to 1 (see
            `symmetric_transition`, `pair_transition`).
        seed: Integer seed; the same seed gives the same noisy labels.

    Returns:
        `NoisyLabels`.

    >>> noisy = transition_noise(np.zeros(4, int), [[0.0, 1.0], [0, 1]])
    >>> noisy.labels.tolist(), noisy.is_noisy.tolist()
    ([1, 1, 1, 1], [True, True, True, True])

    References:
        Patrini et al. 2017 (class-conditional noise); Alexandru,
        "Sharpness-aware minimisation and label noise", section 2 (noise
        that depends on the class, as human "red" noise does).
    """
    t = check_transition_matrix(transition)
    labels, _ = _check_labels(labels, len(t))
    cumulative = np.cumsum(t, axis=1)
    cumulative[:, -1] = 1.0
    u = np.random.default_rng(seed).random(len(labels))
    noisy = (u[:, None] < cumulative[labels]).argmax(axis=1)
    noisy = noisy.astype(labels.dtype)
    return NoisyLabels(noisy, labels.copy(), noisy != labels)
