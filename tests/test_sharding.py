"""Splitting a batch into groups of m examples."""

import numpy as np
import pytest
import tensorflow as tf

from keras_sam import sharding


def test_split_and_merge_round_trip_nested_batches():
    batch = {
        "x": tf.reshape(tf.range(24.0), (6, 2, 2)),
        "y": tf.range(6),
    }
    groups = sharding.split_into_groups(batch, 3)
    assert groups["x"].shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(groups["y"].numpy(), [[0, 1, 2], [3, 4, 5]])
    merged = sharding.merge_groups(groups)
    np.testing.assert_array_equal(merged["x"].numpy(), batch["x"].numpy())


def test_static_batch_not_divisible_by_m_is_an_error():
    with pytest.raises(ValueError, match="not divisible by m=4"):
        sharding.split_into_groups(tf.zeros((6, 2)), 4)


def test_dynamic_batch_not_divisible_by_m_fails_at_run_time():
    split = tf.function(
        lambda t: sharding.split_into_groups(t, 4),
        input_signature=[tf.TensorSpec([None, 2])],
    )
    assert split(tf.zeros((8, 2))).shape == (2, 4, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="divisible"):
        split(tf.zeros((6, 2)))


@pytest.mark.parametrize("m", [0, -1, 1.5, True, "2"])
def test_check_m_rejects_bad_values(m):
    with pytest.raises(ValueError, match="`m` must be a positive integer"):
        sharding.check_m(m)
