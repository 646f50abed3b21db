"""Human ("red") label noise read from a file aligned with the training set.

CIFAR-10N (Wei et al. 2022) ships one noisy label per training example; the
file may be a .npy array, a .npz archive, or a .csv / .txt table (read with
the `csv` module; an optional header line).
"""

import csv
import os
from typing import Optional

import numpy as np

from keras_sam.noise.labels import NoisyLabels
from keras_sam.noise.labels import _check_labels


def _read_rows(path: str) -> list:
    """The non-empty rows of a .csv (commas) or .txt (white space) file."""
    with open(path, newline="") as f:
        if path.lower().endswith(".csv"):
            rows = list(csv.reader(f, skipinitialspace=True))
        else:
            rows = [line.split() for line in f]
    rows = [[token.strip() for token in row] for row in rows]
    return [row for row in rows if any(row)]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _column(path: str, header, width: int, key) -> int:
    """The index of the label column chosen by `key` (a name or index)."""
    if key is None:
        if width != 1:
            raise ValueError(
                f"Label file {path!r} has {width} columns"
                + (f" {header}" if header else "")
                + ": pass `key=` (a column name or index) to choose the "
                "labels."
            )
        return 0
    if not isinstance(key, str):
        return int(key)
    if not header or key not in header:
        raise ValueError(
            f"Label file {path!r} has no column {key!r}; its header "
            f"is {header}. Pass an existing column name or index."
        )
    return header.index(key)


def _parse_text_labels(path: str, key) -> np.ndarray:
    """The label column of a .csv or .txt file, as a float array."""
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"Label file {path!r} is empty.")
    header = None
    if not all(_is_number(token) for token in rows[0]):
        header, rows = rows[0], rows[1:]
    width = len(header) if header else len(rows[0]) if rows else 1
    column = _column(path, header, width, key)
    for number, row in enumerate(rows, start=2 if header else 1):
        if column >= len(row) or not _is_number(row[column]):
            raise ValueError(
                f"Label file {path!r}, line {number}: expected a class "
                f"index in column {column}, found {row!r}."
            )
    return np.asarray([float(row[column]) for row in rows])


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
    values = _check_file_labels(
        path, np.asarray(_load_label_array(path, key)), len(clean),
        num_classes,
    )
    noisy = values.astype(clean.dtype)
    return NoisyLabels(noisy, clean.copy(), noisy != clean)


def _check_file_labels(path, values, num_examples, num_classes):
    """The labels read from `path` as a 1-D array, or a ValueError."""
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
    if len(values) != num_examples:
        raise ValueError(
            f"Label file {path!r} has {len(values)} labels but the training "
            f"set has {num_examples} examples: use the label file that "
            "belongs to this training set, in the same order (no validation "
            "split taken out before)."
        )
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"Label file {path!r} has labels in [{values.min():g}, "
            f"{values.max():g}] but num_classes={num_classes}: labels must "
            "be class indices in [0, num_classes) (pass `num_classes=`)."
        )
    return values
