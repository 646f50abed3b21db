"""Label noise for robustness studies, with a record of what was corrupted.

Every function returns `NoisyLabels`: the noisy labels, the clean labels and
a boolean `is_noisy` mask, so that training accuracy can be reported on the
clean and on the noisy subset separately (Baek et al. 2024, figures 1-2).
"""

import os
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


# -------------------------------------------------- class-conditional noise


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


# ------------------------------------------------- human noise from a file


def _parse_text_labels(path: str, key) -> np.ndarray:
    """The label column of a .csv or .txt file, as a float array."""
    delimiter = "," if path.lower().endswith(".csv") else None
    with open(path, newline="") as f:
        rows = [
            [token.strip() for token in line.split(delimiter)]
            for line in f.read().splitlines()
            if line.strip()
        ]
    if not rows:
        raise ValueError(f"Label file {path!r} is empty.")

    def is_number(token):
        try:
            float(token)
        except ValueError:
            return False
        return True

    header = None
    if not all(is_number(token) for token in rows[0]):
        header, rows = rows[0], rows[1:]
    width = len(header) if header else len(rows[0]) if rows else 1
    if key is None and width != 1:
        raise ValueError(
            f"Label file {path!r} has {width} columns"
            + (f" {header}" if header else "")
            + ": pass `key=` (a column name or index) to choose the labels."
        )
    column = 0
    if key is not None:
        if isinstance(key, str):
            if not header or key not in header:
                raise ValueError(
                    f"Label file {path!r} has no column {key!r}; its header "
                    f"is {header}. Pass an existing column name or index."
                )
            column = header.index(key)
        else:
            column = int(key)
    values = []
    for number, row in enumerate(rows, start=2 if header else 1):
        if column >= len(row) or not is_number(row[column]):
            raise ValueError(
                f"Label file {path!r}, line {number}: expected a class "
                f"index in column {column}, found {row!r}."
            )
        values.append(float(row[column]))
    return np.asarray(values)


def _load_label_array(path: str, key) -> np.ndarray:
    lower = path.lower()
    if lower.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as arrays:
            names = list(arrays.keys())
            if key is None and len(names) == 1:
                key = names[0]
            if key not in names:
                raise ValueError(
                    f"Label file {path!r} holds arrays {names}: pass "
                    "`key=` with one of them (e.g. 'worse_label' for "
                    "CIFAR-10N)."
                )
            return arrays[key]
    if lower.endswith((".csv", ".txt")):
        return _parse_text_labels(path, key)
    raise ValueError(
        f"Label file {path!r}: unsupported format. Use .npy, .npz, .csv or "
        ".txt (convert CIFAR-10N's .pt with `np.save(path, torch.load(pt)"
        "['worse_label'])`)."
    )


def labels_from_file(
    path, clean, num_classes: Optional[int] = None, key=None
) -> NoisyLabels:
    """Noisy ("red") labels read from a file aligned with the training set.

    The file holds one label per training example, in the order of
    `clean`, as in CIFAR-10N (Wei et al. 2022): a .npy array, a .npz
    archive (choose the array with `key`, e.g. "worse_label"), or a .csv /
    .txt file with one label per line (an optional header line; choose a
    column of a multi-column .csv with `key`, a name or an index).

    Args:
        path: Path of the label file.
        clean: 1-D integer array of the true labels of the training set.
        num_classes: Integer, the number of classes; defaults to the
            largest clean label + 1.
        key: Array name (.npz) or column name/index (.csv), if needed.

    Returns:
        `NoisyLabels` whose `is_noisy` marks labels that differ from `clean`.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.csv")
    >>> _ = open(path, "w").write("label\\n0\\n2\\n2\\n")
    >>> labels_from_file(path, np.array([0, 1, 2])).is_noisy.tolist()
    [False, True, False]

    References:
        Wei et al., "Learning with Noisy Labels Revisited: A Study Using
        Real-World Human Annotations", ICLR 2022 (CIFAR-10N); Alexandru,
        "Sharpness-aware minimisation and label noise", sections 2 and 4.3
        (red noise).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Label file not found: {path!r}")
    clean, num_classes = _check_labels(clean, num_classes)
    values = np.asarray(_load_label_array(path, key))
    if values.ndim == 2 and 1 in values.shape:
        values = values.reshape(-1)
    if values.ndim != 1:
        raise ValueError(
            f"Label file {path!r} must hold one label per example (a 1-D "
            f"array). Received shape {values.shape}."
        )
    numeric = np.issubdtype(values.dtype, np.integer) or np.issubdtype(
        values.dtype, np.floating
    )
    if not numeric or np.any(~np.isfinite(values) | (values % 1 != 0)):
        raise ValueError(
            f"Label file {path!r} must hold integer class indices. Received "
            f"dtype {values.dtype} with values such as {values[:5].tolist()}."
        )
    if len(values) != len(clean):
        raise ValueError(
            f"Label file {path!r} has {len(values)} labels but the training "
            f"set has {len(clean)} examples: use the label file that belongs "
            "to this training set, in the same order (no validation split "
            "taken out before)."
        )
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"Label file {path!r} has labels in [{values.min():g}, "
            f"{values.max():g}] but num_classes={num_classes}: labels must "
            "be class indices in [0, num_classes) (pass `num_classes=`)."
        )
    noisy = values.astype(clean.dtype)
    return NoisyLabels(noisy, clean.copy(), noisy != clean)


# ------------------------------------------------------ tf.data datasets


def noisy_dataset(dataset, noise):
    """Applies label noise to a `tf.data` dataset of (x, y) pairs.

    The dataset is read once to collect its labels (it must be finite,
    unbatched, and yield examples in the same order on every pass: apply
    noise before `shuffle`/`batch`, and load tfds data with
    `as_supervised=True, shuffle_files=False`). The returned dataset yields
    `(x, noisy_y)`; each element checks that the dataset still gives the
    clean label it had when the noise was drawn, and fails if the order
    changed.

    Args:
        dataset: A `tf.data.Dataset` of `(x, y)` with scalar integer `y`.
        noise: A callable `labels -> NoisyLabels` (e.g.
            `lambda y: symmetric_noise(y, 0.4, seed=0)`), or a
            `NoisyLabels` aligned with the dataset.

    Returns:
        `(noisy_dataset, noisy_labels)`: the dataset of `(x, noisy_y)` and
        the `NoisyLabels` record (with `is_noisy`) in dataset order.

    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_tensor_slices(([[0.], [1.]], [0, 1]))
    >>> ds, record = noisy_dataset(ds, lambda y: symmetric_noise(y, 1.0))
    >>> [int(y) for _, y in ds], record.is_noisy.tolist()
    ([1, 0], [True, True])

    References:
        Baek et al. 2024, appendix A.1; Foret et al. 2021, section 3.3.
    """
    import tensorflow as tf

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
    clean = np.fromiter(
        dataset.map(lambda x, y: y).as_numpy_iterator(),
        dtype=y_spec.dtype.as_numpy_dtype,
    )
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

    def replace(pair, labels):
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

    return tf.data.Dataset.zip((dataset, extra)).map(replace), record
