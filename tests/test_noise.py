"""Tests for keras_sam.noise: symmetric, transition-matrix and file noise."""

import numpy as np
import pytest
import tensorflow as tf

from keras_sam import noise


@pytest.fixture
def clean():
    return np.random.default_rng(0).integers(0, 10, size=1000).astype("int32")


# ------------------------------------------------------------ symmetric


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 1.0])
def test_symmetric_noise_count_and_mask(clean, rate):
    result = noise.symmetric_noise(clean, rate, num_classes=10, seed=3)
    assert result.is_noisy.sum() == round(rate * len(clean))
    np.testing.assert_array_equal(result.is_noisy, result.labels != clean)
    # No flipped label equals its true label; the others are untouched.
    assert np.all(result.labels[result.is_noisy] != clean[result.is_noisy])
    np.testing.assert_array_equal(
        result.labels[~result.is_noisy], clean[~result.is_noisy]
    )
    np.testing.assert_array_equal(result.clean, clean)
    assert result.labels.min() >= 0 and result.labels.max() < 10


def test_symmetric_noise_is_uniform_over_other_classes(clean):
    result = noise.symmetric_noise(
        np.zeros(20000, "int32"), 1.0, num_classes=5, seed=0
    )
    counts = np.bincount(result.labels, minlength=5) / 20000
    np.testing.assert_allclose(counts, [0, 0.25, 0.25, 0.25, 0.25], atol=0.02)


def test_symmetric_noise_seed(clean):
    a = noise.symmetric_noise(clean, 0.4, seed=7)
    b = noise.symmetric_noise(clean, 0.4, seed=7)
    c = noise.symmetric_noise(clean, 0.4, seed=8)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.is_noisy, b.is_noisy)
    assert np.any(a.labels != c.labels)


# ------------------------------------------------------ transition matrix


def test_transition_noise_matches_matrix_statistically():
    matrix = np.array(
        [[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.25, 0.25, 0.5]]
    )
    n = 30000
    labels = np.repeat(np.arange(3), n)
    result = noise.transition_noise(labels, matrix, seed=1)
    empirical = np.stack(
        [np.bincount(result.labels[labels == i], minlength=3) / n
         for i in range(3)]
    )
    # 4 standard errors of a proportion estimated from n draws.
    tolerance = 4 * np.sqrt(matrix * (1 - matrix) / n) + 1e-12
    assert np.all(np.abs(empirical - matrix) <= tolerance)
    np.testing.assert_array_equal(result.is_noisy, result.labels != labels)
    np.testing.assert_array_equal(result.clean, labels)


def test_transition_noise_seed(clean):
    matrix = noise.symmetric_transition(10, 0.3)
    a = noise.transition_noise(clean, matrix, seed=2)
    b = noise.transition_noise(clean, matrix, seed=2)
    c = noise.transition_noise(clean, matrix, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert np.any(a.labels != c.labels)


def test_symmetric_and_pair_transition_matrices():
    expected = np.full((4, 4), 0.1)
    np.fill_diagonal(expected, 0.7)
    np.testing.assert_allclose(noise.symmetric_transition(4, 0.3), expected)
    pair = noise.pair_transition(4, 0.4, mapping={3: 1})
    expected = np.eye(4)
    expected[3] = [0, 0.4, 0, 0.6]
    np.testing.assert_allclose(pair, expected)
    default = noise.pair_transition(3, 0.2)
    np.testing.assert_allclose(default[2], [0.2, 0, 0.8])


def test_pair_noise_only_moves_to_the_mapped_class(clean):
    result = noise.transition_noise(
        clean, noise.pair_transition(10, 0.5), seed=0
    )
    flipped = result.is_noisy
    assert flipped.any()
    np.testing.assert_array_equal(
        result.labels[flipped], (clean[flipped] + 1) % 10
    )


@pytest.mark.parametrize(
    "matrix, match",
    [
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "square"),
        ([[0.5, 0.6], [0.0, 1.0]], r"sum to 1.*Rows \[0\]"),
        ([[1.2, -0.2], [0.0, 1.0]], ">= 0"),
        ([[np.nan, 1.0], [0.0, 1.0]], "finite"),
    ],
)
def test_malformed_transition_matrix(matrix, match):
    with pytest.raises(ValueError, match=match):
        noise.transition_noise(np.array([0, 1]), matrix)


def test_transition_matrix_smaller_than_labels():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        noise.transition_noise(np.array([0, 2]), np.eye(2))


# -------------------------------------------------------------- label file


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


# ------------------------------------------------------------- tf.data


def test_noisy_dataset_yields_noisy_labels_and_record():
    x = np.arange(40, dtype="float32").reshape(20, 2)
    y = np.arange(20, dtype="int64") % 4
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    noisy, record = noise.noisy_dataset(
        dataset, lambda labels: noise.symmetric_noise(labels, 0.5, seed=4)
    )
    expected = noise.symmetric_noise(y, 0.5, seed=4)
    pairs = list(noisy.as_numpy_iterator())
    np.testing.assert_array_equal([p[0] for p in pairs], x)
    np.testing.assert_array_equal([p[1] for p in pairs], expected.labels)
    np.testing.assert_array_equal(record.is_noisy, expected.is_noisy)
    assert record.is_noisy.sum() == 10
    # It batches and iterates again with the same labels.
    batches = list(noisy.batch(8).as_numpy_iterator())
    np.testing.assert_array_equal(
        np.concatenate([b[1] for b in batches]), expected.labels
    )


def test_noisy_dataset_detects_reshuffling():
    y = np.arange(50, dtype="int32") % 10
    dataset = tf.data.Dataset.from_tensor_slices((y.astype("float32"), y))
    dataset = dataset.shuffle(50, seed=1, reshuffle_each_iteration=True)
    noisy, _ = noise.noisy_dataset(
        dataset, lambda labels: noise.symmetric_noise(labels, 0.2)
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="order changed"):
        list(noisy.as_numpy_iterator())


def test_noisy_dataset_rejects_batched_data():
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((8, 2)), np.zeros(8, "int32"))
    ).batch(4)
    with pytest.raises(ValueError, match="before `batch"):
        noise.noisy_dataset(dataset, lambda y: noise.symmetric_noise(y, 0.1))
