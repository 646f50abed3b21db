"""Tests of keras_sam.sharpness.m_sharpness against hand computations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sam.diagnostics import sharpness


@pytest.fixture
def mlp():
    """A compiled 4-5-3 tanh MLP with 12 examples of 3 classes."""
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype("float32")
    y = rng.integers(0, 3, size=12).astype("int32")
    weight = rng.uniform(0.5, 2.0, size=12).astype("float32")
    return model, x, y, weight


def _hand_sharpness(weights, x, y, weight, rho, p):
    """One ascent step with plain TF ops on a 2-layer tanh MLP."""
    w1, b1, w2, b2 = [tf.constant(w) for w in weights]

    def loss(params):
        w1, b1, w2, b2 = params
        logits = tf.tanh(x @ w1 + b1) @ w2 + b2
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        return tf.reduce_sum(losses * weight) / len(y)

    params = [w1, b1, w2, b2]
    with tf.GradientTape() as tape:
        tape.watch(params)
        value = loss(params)
    grads = tape.gradient(value, params)
    if p == 2:
        norm = tf.sqrt(sum(tf.reduce_sum(g**2) for g in grads))
        eps = [rho * g / norm for g in grads]
    else:
        eps = [rho * tf.sign(g) for g in grads]
    return float(loss([w + e for w, e in zip(params, eps)]) - value)


@pytest.mark.parametrize("p", [2.0, float("inf")], ids=["p2", "pinf"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weights"])
def test_one_step_matches_hand_computation(mlp, p, weighted):
    model, x, y, weight = mlp
    weight = weight if weighted else np.ones_like(weight)
    weights = model.get_weights()
    m, rho = 4, 0.1
    expected = [
        _hand_sharpness(weights, x[i : i + m], y[i : i + m],
                        weight[i : i + m], rho, p)
        for i in range(0, len(y), m)
    ]
    data = (x, y, weight) if weighted else (x, y)
    result = sharpness.m_sharpness(model, data, m=m, rho=rho, p=p)
    np.testing.assert_allclose(result.per_group, expected, rtol=1e-4)
    assert result.value == pytest.approx(np.mean(expected), rel=1e-4)
    assert result.std_error == pytest.approx(
        np.std(expected, ddof=1) / np.sqrt(3), rel=1e-3
    )
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_groups_straddle_dataset_batches(mlp):
    model, x, y, _ = mlp
    arrays = sharpness.m_sharpness(model, (x, y), m=3, rho=0.05)
    # Batches of 5 examples: groups of 3 are formed across batches.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    from_dataset = sharpness.m_sharpness(model, dataset, m=3, rho=0.05)
    np.testing.assert_allclose(
        from_dataset.per_group, arrays.per_group, rtol=1e-5
    )
    assert len(arrays.per_group) == 4


@pytest.mark.parametrize("steps", [1, 3])
def test_whole_dataset_equals_single_group(mlp, steps):
    model, x, y, _ = mlp
    # m = None accumulates the gradient over batches of 5; m = n does the
    # same maximisation on one group of all 12 examples.
    whole = sharpness.m_sharpness(
        model, (x, y), m=None, rho=0.2, steps=steps, batch_size=5
    )
    group = sharpness.m_sharpness(model, (x, y), m=12, rho=0.2, steps=steps)
    assert whole.value == pytest.approx(group.value, rel=1e-4)
    assert np.isnan(whole.std_error)


@pytest.mark.parametrize("p", [2.0, float("inf")], ids=["p2", "pinf"])
def test_more_steps_climb_higher_on_convex_loss(p):
    # Linear regression with MSE: the loss is convex in the weights, so
    # each projected ascent step can only increase it. Near the minimum the
    # gradient is small and the curvature dominates: one step along the
    # gradient is far from the maximum over the ball.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5)).astype("float32") * [1, 1, 1, 3, 0.2]
    y = rng.normal(size=(16, 2)).astype("float32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    model.compile(loss="mse")
    features = np.hstack([x, np.ones((16, 1))])
    solution = np.linalg.lstsq(features, y, rcond=None)[0]
    solution += 0.01 * rng.normal(size=solution.shape)
    model.set_weights([solution[:5], solution[5]])
    values = [
        sharpness.m_sharpness(
            model, (x, y), m=4, rho=0.5, steps=steps, p=p
        ).per_group
        for steps in (1, 2, 5)
    ]
    for fewer, more in zip(values, values[1:]):
        assert np.all(more >= fewer - 1e-6)
    assert values[-1].mean() > 1.05 * values[0].mean()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"m": 0}, "`m`"),
        ({"m": 2, "rho": 0.0}, "`rho`"),
        ({"m": 2, "steps": 0}, "`steps`"),
        ({"m": 2, "steps": 2, "p": 3.0}, "p=2"),
        ({"m": 20}, "fewer than m=20"),
    ],
)
def test_invalid_arguments_are_reported(mlp, kwargs, match):
    model, x, y, _ = mlp
    with pytest.raises(ValueError, match=match):
        sharpness.m_sharpness(model, (x, y), **kwargs)
