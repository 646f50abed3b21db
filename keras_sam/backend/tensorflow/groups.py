"""Splitting a replica's batch into groups of m examples (m-sharpness).

Foret et al. (section 4.1) define m-sharpness by a sum of independent
perturbations, each computed on a disjoint group of m examples. `SAMModel`
reshapes every tensor of a batch from `[n, ...]` to `[n // m, m, ...]`,
maps the SAM step over the leading axis with `map_groups`, and merges the
results back. These helpers do the reshaping, its checks, and the mapping.

How the groups are mapped matters for speed. `tf.vectorized_map` batches
the groups into one computation, which is fast for dense layers, but it has
no batched form of a convolution whose filter differs per group (the second
SAM pass runs each group at its own w + eps): it runs those ops one group
at a time in `tf.while_loop`s, and XLA on CPU compiles convolution
gradients inside loops without its fast convolution path (about 100 times
slower). `map_groups` therefore unrolls a few groups of such functions into
straight-line code and vectorises everything else.
"""

import collections
import numbers
from typing import Callable, Optional

import tensorflow as tf

from keras_sam.backend.state import check_groups_of_one


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


# Every strategy computes the same thing (`fn` on each group, outputs
# stacked), works under XLA and in the replica context of any
# `tf.distribute` strategy, and traces `fn` only at trace time:
#
# - "vectorize": `tf.vectorized_map`, one batched computation for all
#   groups. Fast for dense layers; ops without a batched form (see
#   `LOOPED_BY_VECTORIZED_MAP`) run in while loops, group by group.
# - "unroll": a Python loop over a static number of groups, so each group
#   is straight-line code with the cost of one small batch. Trace and
#   compile time grow with the number of groups.
# - "loop": `tf.map_fn`, `parallel_iterations` groups at a time. Slower,
#   but memory does not grow with the number of groups.
# - "auto" (default): "unroll" when `fn` contains ops that "vectorize"
#   would loop over (convolutions), the number of groups is static, and
#   the unrolled graph would have at most `max_unrolled_ops` ops; "unroll"
#   (if as small) or "loop" where "vectorize" fails or would fail: it
#   would crash (`CRASHES_VECTORIZED_MAP_ON_ONE_EXAMPLE`), `fn` has a loop
#   (`NOT_VECTORIZED`: a recurrent layer) or a tensor of rank
#   `MAX_VECTORIZED_RANK` (the group axis would raise it past what CPU
#   kernels take); "vectorize" otherwise. Deciding traces `fn` once more,
#   into a graph that is thrown away.
STRATEGIES = ("auto", "vectorize", "unroll", "loop")

# Ops that `tf.vectorized_map` cannot batch over per-group weights: pfor runs
# them one group at a time in a `tf.while_loop` (Conv2D and
# Conv2DBackpropInput with a per-group filter, Conv2DBackpropFilter with
# per-group inputs; the 3-D and generic convolutions have no converter).
LOOPED_BY_VECTORIZED_MAP = frozenset(
    {
        "Conv",
        "Conv2D",
        "Conv2DBackpropFilter",
        "Conv2DBackpropFilterV2",
        "Conv2DBackpropInput",
        "Conv2DBackpropInputV2",
        "Conv3D",
        "Conv3DBackpropFilterV2",
        "Conv3DBackpropInputV2",
    }
)

# Ops on which `tf.vectorized_map` crashes the process (a segmentation
# fault, TF 2.21) when each group holds one example: a BatchMatMulV2 of a
# stacked `[1, T, d]` operand with a loop-invariant matrix, as Keras'
# EinsumDense (MultiHeadAttention's projections) computes on sequences.
# Reproduced by `tf.vectorized_map(lambda x: tf.matmul(x, k), tf.ones([4,
# 1, 8, 8]))` with `k` of shape [8, 8]; no upstream issue found.
CRASHES_VECTORIZED_MAP_ON_ONE_EXAMPLE = frozenset({"BatchMatMulV2"})

# Loops inside `fn` (Keras' recurrent layers): `tf.vectorized_map` fails on
# some of them, e.g. `Embedding(mask_zero=True)` + `GRU` ("dtype variant is
# not compatible with 0 of dtype int64", TF 2.21, from the loop's
# TensorList); a map that keeps one group per call runs them as they are.
NOT_VECTORIZED = frozenset({"While", "StatelessWhile"})

# `tf.vectorized_map` adds the group axis to every tensor of `fn`: a rank-5
# tensor becomes rank 6, which CPU kernels refuse (oneDNN's softmax takes
# rank <= 5: "Input dims must be <= 5", e.g. the attention of KerasHub's
# Gemma). Functions with tensors of this rank keep one group per call.
MAX_VECTORIZED_RANK = 5


def map_groups(
    fn: Callable,
    groups,
    *,
    strategy: str = "auto",
    max_unrolled_ops: int = 50_000,
    parallel_iterations: int = 4,
):
    """Applies `fn` to every group (leading axis) and stacks the results.

    Every strategy (see `STRATEGIES`) computes the same thing, works under
    XLA and in the replica context of any `tf.distribute` strategy, and
    traces `fn` only at trace time.

    Args:
        fn: Function of one group (a nested structure of tensors shaped
            `[m, ...]`) returning a nested structure of tensors.
        groups: Nested structure of tensors shaped `[num_groups, m, ...]`.
        strategy: One of `STRATEGIES`. Defaults to "auto".
        max_unrolled_ops: Integer, the largest graph "auto" unrolls to
            (number of groups times the ops of `fn`'s graph, gradients
            included). Defaults to 50,000: all 128 groups of a small CNN,
            or 10 groups of a CIFAR ResNet-20. Trace and compile time and
            compiler memory grow with it.
        parallel_iterations: Integer, the groups "loop" runs at once.
            Defaults to 4.

    Returns:
        `fn`'s outputs, stacked along a new leading axis of num_groups.

    Raises:
        ValueError: For an unknown `strategy`, or "unroll" with a number of
            groups that is not known at trace time.

    >>> map_groups(lambda g: tf.reduce_sum(g), tf.ones([3, 2])).numpy()
    array([2., 2., 2.], dtype=float32)
    >>> map_groups(lambda g: g[0] * 2, tf.eye(2), strategy="unroll").numpy()
    array([2., 0.], dtype=float32)
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"`strategy` must be one of {STRATEGIES}. Received: "
            f"strategy={strategy!r}"
        )
    num_groups = tf.nest.flatten(groups)[0].shape[0]
    if strategy == "auto":
        strategy = _auto_strategy(fn, groups, num_groups, max_unrolled_ops)
    if strategy == "vectorize":
        return tf.vectorized_map(fn, groups)
    if strategy == "loop":
        output_spec = tf.nest.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype),
            _trace(fn, groups).structured_outputs,
        )
        return tf.map_fn(
            fn, groups, fn_output_signature=output_spec,
            parallel_iterations=parallel_iterations,
        )
    return _unrolled(fn, groups, num_groups)


def _auto_strategy(fn, groups, num_groups, max_unrolled_ops) -> str:
    """Resolves "auto": "unroll" where "vectorize" would loop, if small;
    never "vectorize" where it would crash."""
    if num_groups == 1:
        return "unroll"
    one_example = tf.nest.flatten(groups)[0].shape[1] == 1
    traced = _trace(fn, groups)
    op_types = _op_types(traced)
    small = (
        num_groups is not None
        and num_groups * sum(op_types.values()) <= max_unrolled_ops
    )
    fails = (
        (one_example
         and not CRASHES_VECTORIZED_MAP_ON_ONE_EXAMPLE.isdisjoint(op_types))
        or not NOT_VECTORIZED.isdisjoint(op_types)
        or _max_rank(traced) >= MAX_VECTORIZED_RANK
    )
    if fails:
        return "unroll" if small else "loop"
    if small and not LOOPED_BY_VECTORIZED_MAP.isdisjoint(op_types):
        return "unroll"
    return "vectorize"


def _unrolled(fn, groups, num_groups):
    """`fn` on each group in a Python loop (a static number of groups)."""
    if num_groups is None:
        raise ValueError(
            "strategy='unroll' needs a number of groups known at trace "
            "time: batch the dataset with drop_remainder=True."
        )
    flat = [tf.unstack(t, num=num_groups) for t in tf.nest.flatten(groups)]
    outputs = [
        fn(tf.nest.pack_sequence_as(groups, [c[i] for c in flat]))
        for i in range(num_groups)
    ]
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outputs)


def _trace(fn, groups):
    """`fn` traced on one group into a throwaway graph."""
    spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape[1:], t.dtype), groups
    )
    return tf.function(fn).get_concrete_function(spec)


def _max_rank(concrete_function) -> int:
    """The highest rank of a tensor in a function's graph (0 if none)."""
    ranks = [
        t.shape.rank
        for op in concrete_function.graph.get_operations()
        for t in op.outputs
        if t.shape.rank is not None
    ]
    return max(ranks, default=0)


def _op_types(concrete_function) -> collections.Counter:
    """How many ops of each type a function's graph and its callees have."""
    graph_def = concrete_function.graph.as_graph_def()
    counts = collections.Counter(node.op for node in graph_def.node)
    for function in graph_def.library.function:
        counts.update(node.op for node in function.node_def)
    return counts


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


def split_with_remainder(structure, n, m: int):
    """A batch of n as `(groups, sizes, rest)`: the first n // m groups of
    m examples, shaped `[groups, m, ...]`, their sizes, and the n % m
    examples left over.

    `groups` and `sizes` are None when there is no whole group at trace
    time (n static), `rest` when nothing is left over. With a dynamic n
    there is at least one group, padded with zeros and of size 0 when n <
    m (mapping over no group fails, even where only XLA compiles it), and
    `rest` may hold no example.

    >>> full, sizes, rest = split_with_remainder(tf.zeros([7, 3]), 7, m=3)
    >>> full.shape, sizes.numpy().tolist(), rest.shape
    (TensorShape([2, 3, 3]), [3, 3], TensorShape([1, 3]))
    """
    q = n // m
    tail = tf.nest.map_structure(lambda t: t[q * m:], structure)
    if isinstance(n, int):
        if q == 0:
            return None, None, tail
        head = tf.nest.map_structure(lambda t: t[: q * m], structure)
        rest = tail if n % m else None
        return split_into_groups(head, m), tf.fill([q], m), rest
    count = tf.maximum(q, 1)

    def head(t):
        padding = tf.zeros(tf.concat([[count * m - q * m], tf.shape(t)[1:]],
                                     0), t.dtype)
        return tf.concat([t[: q * m], padding], 0)

    full = split_into_groups(tf.nest.map_structure(head, structure), m)
    sizes = tf.where(tf.range(count) < q, m, 0)
    return full, sizes, tail


def weighted_sum(weights, stacked):
    """sum_g weights[g] * stacked[g], for tensors stacked on axis 0; a
    weight of 0 drops its entry, even where the entry is not finite (the
    pass over an empty group)."""
    weights = tf.cast(weights, stacked.dtype)
    ones = [1] * (stacked.shape.rank - 1)
    weights = tf.reshape(weights, [-1] + ones)
    terms = tf.where(weights > 0, weights * stacked, tf.zeros_like(stacked))
    return tf.reduce_sum(terms, axis=0)


def merge_updates(updates: dict, state: list, averaged: set, metric_ids: set,
                  sizes) -> dict:
    """One state update from the groups' updates (stacked on axis 0).

    `updates` maps an index into `state` to the groups' new values, and
    `sizes` holds each group's number of examples. A group's change of a
    float variable (or of a metric's variable, `id` in `metric_ids`) is an
    increment, and increments add up across groups, as one pass over the
    whole batch would add them: metrics, counters, running sums. Variables
    whose `id` is in `averaged` (BatchNorm's moving statistics, averages of
    a batch's statistics) take the groups' mean weighted by size instead.
    Other integer state (seed generators) is the same in every group.
    Empty groups change nothing.
    """
    sizes = tf.cast(sizes, tf.float32)
    merged = {}
    for i, values in updates.items():
        variable = state[i]
        added = values.dtype.is_floating or id(variable) in metric_ids
        if not added:
            merged[i] = values[0]
            continue
        old = tf.cast(variable.value, values.dtype)
        if id(variable) in averaged:
            share = tf.math.divide_no_nan(sizes, tf.reduce_sum(sizes))
        else:
            share = tf.cast(sizes > 0, tf.float32)
        merged[i] = old + weighted_sum(share, values - old)
    return merged


def group_size(model, m: Optional[int], batch) -> Optional[int]:
    """The `m` to split `batch` by, or None when it is one group.

    Raises:
        ValueError: m=1 on a model with BatchNormalization (a batch of one).
    """
    if m is None:
        return None
    check_groups_of_one(model, m)
    n = batch_size(batch[0])
    return None if isinstance(n, int) and n <= m else m
