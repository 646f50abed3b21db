"""Tests of keras_sam.noise.files: human noise read from label files."""

import numpy as np
import pytest

from keras_sam import noise


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".txt"])
def test_labels_from_file(tmp_path, suffix):
    clean = np.array([0, 1, 2, 3, 1], dtype="int32")
    human = np.array([0, 2, 2, 3, 0])
    path = tmp_path / f"labels{suffix}"
    if suffix == ".npy":
        np.save(path, human)
    elif suffix == ".npz":
        np.savez(path, worse_label=human, aggre_label=clean)
    elif suffix == ".csv":
        path.write_text("index,worse_label\n" + "".join(
            f"{i},{v}\n" for i, v in enumerate(human)))
    else:
        path.write_text("\n".join(str(v) for v in human) + "\n")
    key = "worse_label" if suffix in (".npz", ".csv") else None
    result = noise.labels_from_file(path, clean, num_classes=4, key=key)
    np.testing.assert_array_equal(result.labels, human)
    assert result.labels.dtype == clean.dtype
    np.testing.assert_array_equal(result.clean, clean)
    np.testing.assert_array_equal(
        result.is_noisy, [False, True, False, False, True]
    )


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("short.txt", "0\n1\n", "has 2 labels but the training set has 3"),
        ("range.txt", "0\n1\n7\n", r"labels in \[0, 7\].*num_classes=3"),
        ("negative.npy", np.array([0, -1, 2]), r"\[-1, 2\]"),
        ("fraction.txt", "0\n1.5\n2\n", "integer class indices"),
        ("word.csv", "label\n0\ncat\n2\n", "line 3"),
        ("wide.csv", "a,b\n0,1\n1,1\n2,1\n", "pass `key=`"),
        ("matrix.npy", np.zeros((3, 2), int), r"shape \(3, 2\)"),
        ("labels.json", "[0, 1, 2]", "unsupported format"),
    ],
)
def test_malformed_label_file(tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content)
    with pytest.raises(ValueError, match=match):
        noise.labels_from_file(path, np.array([0, 1, 2]), num_classes=3)


def test_missing_label_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        noise.labels_from_file(tmp_path / "nope.npy", np.array([0, 1]))
