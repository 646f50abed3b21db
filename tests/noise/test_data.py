"""Tests of keras_sam.noise.data: noise on tf.data pipelines."""

import numpy as np
import pytest
import tensorflow as tf

from keras_sam import noise


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
