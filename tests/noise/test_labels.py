"""Tests of keras_sam.noise.labels: symmetric and transition-matrix noise."""

import numpy as np
import pytest

from keras_sam import noise


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
