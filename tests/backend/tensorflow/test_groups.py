"""Splitting a batch into groups of m examples."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from keras_sam.backend.tensorflow import groups as m_groups
from keras_sam.core.options import check_m


def test_split_and_merge_round_trip_nested_batches():
    batch = {
        "x": tf.reshape(tf.range(24.0), (6, 2, 2)),
        "y": tf.range(6),
    }
    groups = m_groups.split_into_groups(batch, 3)
    assert groups["x"].shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(groups["y"].numpy(), [[0, 1, 2], [3, 4, 5]])
    merged = m_groups.merge_groups(groups)
    np.testing.assert_array_equal(merged["x"].numpy(), batch["x"].numpy())


def test_static_batch_not_divisible_by_m_is_an_error():
    with pytest.raises(ValueError, match="not divisible by m=4"):
        m_groups.split_into_groups(tf.zeros((6, 2)), 4)


def test_dynamic_batch_not_divisible_by_m_fails_at_run_time():
    split = tf.function(
        lambda t: m_groups.split_into_groups(t, 4),
        input_signature=[tf.TensorSpec([None, 2])],
    )
    assert split(tf.zeros((8, 2))).shape == (2, 4, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="divisible"):
        split(tf.zeros((6, 2)))


@pytest.mark.parametrize("m", [0, -1, 1.5, True, "2"])
def test_check_m_rejects_bad_values(m):
    with pytest.raises(ValueError, match="`m` must be a positive integer"):
        check_m(m)


# --------------------------------------------------------------- map_groups

GROUPS, M = 3, 2


def conv_fn(weights):
    """A two-pass, SAM-like function of one group with a per-group filter.

    The second pass convolves with `kernel + eps`, where eps depends on the
    group: exactly what `tf.vectorized_map` cannot batch.
    """
    kernel, dense = weights

    def loss(k, d, x, y):
        h = tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME"))
        logits = tf.reshape(h, [tf.shape(x)[0], -1]) @ d
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        )

    def fn(group):
        x, y = group["x"], group["y"]
        with tf.GradientTape() as tape:
            tape.watch([kernel, dense])
            first = loss(kernel, dense, x, y)
        g = tape.gradient(first, [kernel, dense])
        norm = tf.linalg.global_norm(g) + 1e-12
        perturbed = [w + 0.1 * gi / norm for w, gi in zip([kernel, dense], g)]
        with tf.GradientTape() as tape:
            tape.watch(perturbed)
            second = loss(*perturbed, x, y)
        return {"grads": tape.gradient(second, perturbed), "loss": first}

    return fn


def dense_fn(weights):
    w = weights[1]

    def fn(group):
        x = tf.reshape(group["x"], [M, -1])
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = tf.reduce_sum(tf.tanh(0.2 * x @ w) ** 2)
        return tape.gradient(loss, w), loss

    return fn


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    groups = {
        "x": tf.constant(rng.normal(size=(GROUPS, M, 4, 4, 2)), tf.float32),
        "y": tf.constant(rng.integers(0, 3, size=(GROUPS, M)), tf.int32),
    }
    weights = [
        tf.constant(rng.normal(size=(3, 3, 2, 2)), tf.float32),
        tf.constant(rng.normal(size=(32, 3)), tf.float32),
    ]
    return groups, weights


def one_by_one(fn, groups):
    """The definition: `fn` on each group, eagerly, outputs stacked."""
    outputs = [
        fn(tf.nest.map_structure(lambda t: t[i], groups))
        for i in range(GROUPS)
    ]
    return tf.nest.map_structure(lambda *xs: np.stack(xs), *outputs)


def assert_structures_close(actual, expected):
    tf.nest.assert_same_structure(actual, expected)
    for a, e in zip(tf.nest.flatten(actual), tf.nest.flatten(expected)):
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_fn", [conv_fn, dense_fn])
@pytest.mark.parametrize("strategy", m_groups.STRATEGIES)
@pytest.mark.parametrize("jit", [False, True])
def test_every_strategy_computes_fn_on_each_group(
    problem, make_fn, strategy, jit
):
    groups, weights = problem
    fn = make_fn(weights)
    mapped = tf.function(
        lambda g: m_groups.map_groups(fn, g, strategy=strategy),
        jit_compile=jit,
    )
    assert_structures_close(mapped(groups), one_by_one(fn, groups))


def graph_op_types(fn, groups, **kwargs):
    """Op types of the graph of `map_groups(fn, groups, **kwargs)`."""
    traced = tf.function(lambda g: m_groups.map_groups(fn, g, **kwargs))
    graph = traced.get_concrete_function(groups).graph
    return [op.type for op in graph.get_operations()]


def test_auto_unrolls_convolutions(problem):
    groups, weights = problem
    ops = graph_op_types(conv_fn(weights), groups)
    assert "While" not in ops and "StatelessWhile" not in ops
    # Forward at w and at w + eps, in each of the unrolled groups.
    assert ops.count("Conv2D") == 2 * GROUPS


def test_auto_vectorises_dense_functions(problem):
    groups, weights = problem
    ops = graph_op_types(dense_fn(weights), groups)
    assert "BatchMatMulV2" in ops or "BatchMatMulV3" in ops
    assert "While" not in ops and "StatelessWhile" not in ops


def test_auto_vectorises_when_unrolling_would_exceed_the_budget(problem):
    groups, weights = problem
    ops = graph_op_types(conv_fn(weights), groups, max_unrolled_ops=100)
    assert ops.count("Conv2D") < 2 * GROUPS
    assert "While" in ops or "StatelessWhile" in ops  # pfor's fallback


def test_unknown_number_of_groups(problem):
    groups, weights = problem
    fn = conv_fn(weights)
    spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), groups
    )
    auto = tf.function(lambda g: m_groups.map_groups(fn, g))
    assert_structures_close(
        auto.get_concrete_function(spec)(groups), one_by_one(fn, groups)
    )
    unroll = tf.function(
        lambda g: m_groups.map_groups(fn, g, strategy="unroll")
    )
    with pytest.raises(ValueError, match="drop_remainder=True"):
        unroll.get_concrete_function(spec)


@pytest.mark.parametrize("num_groups", [4, None])
def test_auto_avoids_the_vectorized_map_crash_on_one_example_groups(
    num_groups,
):
    """`tf.vectorized_map` segfaults on a sequence matmul with a shared
    kernel when each group holds one example (EinsumDense in 1-SAM); "auto"
    unrolls (static groups) or loops (dynamic groups) instead."""
    kernel = tf.constant(
        np.random.default_rng(0).normal(size=(3, 2)), tf.float32
    )

    def fn(x):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            loss = tf.reduce_sum(tf.tanh(tf.matmul(x, kernel)))
        return tape.gradient(loss, kernel)

    groups = tf.constant(
        np.random.default_rng(1).normal(size=(4, 1, 5, 3)), tf.float32
    )
    spec = tf.TensorSpec([num_groups, 1, 5, 3], tf.float32)
    mapped = tf.function(lambda g: m_groups.map_groups(fn, g))
    graph = mapped.get_concrete_function(spec).graph
    assert "BatchMatMulV2" in [op.type for op in fn_graph(fn, groups)]
    ops = [op.type for op in graph.get_operations()]
    looped = "While" in ops or "StatelessWhile" in ops
    assert looped == (num_groups is None)
    expected = np.stack([fn(groups[i]).numpy() for i in range(4)])
    np.testing.assert_allclose(mapped(groups), expected, rtol=1e-5)


def fn_graph(fn, groups):
    """The ops of `fn` traced on one group."""
    spec = tf.TensorSpec(groups.shape[1:], groups.dtype)
    return tf.function(fn).get_concrete_function(spec).graph.get_operations()


def test_unknown_strategy_is_an_error(problem):
    groups, weights = problem
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        m_groups.map_groups(dense_fn(weights), groups, strategy="pmap")


@pytest.mark.parametrize("strategy", ["auto", "vectorize"])
def test_map_groups_in_mirrored_replica_context(problem, strategy):
    groups, weights = problem
    fn = conv_fn(weights)
    mirrored = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )

    @tf.function(jit_compile=True)
    def replica_fn():
        context = tf.distribute.get_replica_context()
        shift = tf.cast(context.replica_id_in_sync_group, tf.float32)
        shifted = dict(groups, x=groups["x"] + shift)
        return m_groups.map_groups(fn, shifted, strategy=strategy)

    results = mirrored.experimental_local_results(mirrored.run(replica_fn))
    for replica, result in enumerate(results):
        shifted = dict(groups, x=groups["x"] + replica)
        assert_structures_close(result, one_by_one(fn, shifted))


@pytest.mark.parametrize("replicas, jit", [(1, True), (1, False), (2, False)])
def test_sam_model_with_convolutions_matches_a_hand_computation(
    problem, replicas, jit
):
    """One m-SAM step of a conv net (auto unrolls) against `conv_fn`."""
    groups, weights = problem
    x = tf.reshape(tf.tile(groups["x"], [replicas, 1, 1, 1, 1]), [-1, 4, 4, 2])
    y = tf.reshape(tf.tile(groups["y"], [replicas, 1]), [-1])
    x = x + tf.repeat(tf.range(replicas * GROUPS, dtype=tf.float32), M)[
        :, None, None, None
    ] * 0.1  # every group different, also across replicas
    learning_rate = 0.5
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(replicas)],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    with strategy.scope():
        base = keras.Sequential(
            [
                keras.Input((4, 4, 2)),
                keras.layers.Conv2D(
                    2, 3, padding="same", use_bias=False, activation="relu"
                ),
                keras.layers.Flatten(),
                keras.layers.Dense(3, use_bias=False),
            ]
        )
        model = keras_sam.SAMModel.from_model(base, rho=0.1, m=M)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
    for variable, value in zip(model.trainable_variables, weights):
        variable.assign(value)
    model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)

    all_groups = {
        "x": tf.reshape(x, [-1, M, 4, 4, 2]),
        "y": tf.reshape(y, [-1, M]),
    }
    grads = [
        conv_fn(weights)(tf.nest.map_structure(lambda t: t[i], all_groups))[
            "grads"
        ]
        for i in range(replicas * GROUPS)
    ]
    for variable, w, *g in zip(model.trainable_variables, weights, *grads):
        expected = w.numpy() - learning_rate * np.mean(g, axis=0)
        np.testing.assert_allclose(
            variable.numpy(), expected, rtol=1e-5, atol=1e-6
        )
