"""Splitting a replica's batch into groups of m examples (m-sharpness).

Foret et al. (section 4.1) define m-sharpness by a sum of independent
perturbations, each computed on a disjoint group of m examples. `SAMModel`
reshapes every tensor of a batch from `[n, ...]` to `[n // m, m, ...]`,
maps the SAM step over the leading axis with `tf.vectorized_map`, and merges
the results back. These helpers do the reshaping and its checks.
"""

import numbers
from typing import Optional

import tensorflow as tf


def check_m(m: Optional[int]) -> Optional[int]:
    """Validates the group size `m` (None means the whole replica batch)."""
    if m is None:
        return None
    if (
        isinstance(m, bool)
        or not isinstance(m, numbers.Integral)
        or m < 1
    ):
        raise ValueError(
            "`m` must be a positive integer (examples per perturbation "
            f"group) or None for the whole per-replica batch. Received: m={m!r}"
        )
    return int(m)


def batch_size(structure) -> tf.Tensor:
    """The (possibly dynamic) leading dimension shared by a nested batch."""
    first = tf.nest.flatten(structure)[0]
    static = first.shape[0]
    return static if static is not None else tf.shape(first)[0]


def split_into_groups(structure, m: int):
    """Reshapes every tensor in `structure` from `[n, ...]` to `[n/m, m, ...]`.

    Raises:
        ValueError: At trace time, when the static batch size is not
            divisible by `m`. A dynamic batch size is checked at run time.

    >>> split_into_groups(tf.zeros([6, 3]), m=2).shape
    TensorShape([3, 2, 3])
    """
    n = batch_size(structure)
    if isinstance(n, int):
        if n % m:
            raise ValueError(
                f"The per-replica batch size ({n}) is not divisible by m={m}. "
                "Choose a batch size that is a multiple of m times the number "
                "of replicas, and pass drop_remainder=True (or a dataset "
                "whose size is a multiple of the global batch size) so the "
                "last batch is not smaller."
            )
        checks = []
    else:
        checks = [
            tf.debugging.assert_equal(
                n % m,
                0,
                message=(
                    f"The per-replica batch size is not divisible by m={m}: "
                    "batch your dataset with drop_remainder=True and a "
                    "global batch size that is a multiple of m times the "
                    "number of replicas."
                ),
            )
        ]
    with tf.control_dependencies(checks):
        return tf.nest.map_structure(
            lambda t: tf.reshape(t, [-1, m] + _inner_shape(t, 1)), structure
        )


def map_groups(fn, groups):
    """Applies `fn` to every group (leading axis) and stacks the results.

    Vectorised with `tf.vectorized_map`, so the groups run as one batched
    computation rather than a Python loop; works under XLA and in replica
    context.

    Args:
        fn: Function of one group (a nested structure of tensors shaped
            `[m, ...]`) returning a nested structure of tensors.
        groups: Nested structure of tensors shaped `[num_groups, m, ...]`.

    Returns:
        `fn`'s outputs, stacked along a new leading axis of num_groups.

    >>> map_groups(lambda g: tf.reduce_sum(g), tf.ones([3, 2])).numpy()
    array([2., 2., 2.], dtype=float32)
    """
    return tf.vectorized_map(fn, groups)


def merge_groups(structure):
    """Inverse of `split_into_groups`: `[g, m, ...]` back to `[g * m, ...]`."""
    return tf.nest.map_structure(
        lambda t: tf.reshape(t, [-1] + _inner_shape(t, 2)), structure
    )


def _inner_shape(t: tf.Tensor, start: int) -> list:
    """Dimensions of `t` from `start` on: static where known, else dynamic."""
    dynamic = tf.shape(t)
    return [
        dim if dim is not None else dynamic[i]
        for i, dim in enumerate(t.shape.as_list()[start:], start)
    ]
