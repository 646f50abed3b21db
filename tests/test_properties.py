"""Property-based tests of one SAM step over random small models.

Hypothesis draws a Dense network (depth 1-2, small widths), a batch size,
a group size m dividing it, a norm p in {2, 3, inf} and rho, and checks the
step against a generic hand computation of p-norm SAM with groups written
here with plain TensorFlow and NumPy (not keras_sam), that everything stays
finite, and that rho = 0 is exactly the base optimizer.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_sam

LEARNING_RATE = 0.1
PROPERTY_SETTINGS = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,  # the same examples on every run
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@st.composite
def problems(draw, rho=None):
    """A random network, batch, m, p and rho (rho fixed when given)."""
    input_dim = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    batch = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    divisors = [d for d in range(1, batch + 1) if batch % d == 0]
    m = draw(st.sampled_from([None] + divisors))
    p = draw(st.sampled_from([2.0, 3.0, math.inf]))
    if rho is None:
        rho = draw(st.one_of(st.just(0.0), st.floats(0.01, 1.0)))
    seed = draw(st.integers(0, 2**16))
    return {
        "input_dim": input_dim, "widths": widths, "batch": batch, "m": m,
        "p": p, "rho": rho, "seed": seed,
    }


def weights_and_data(problem):
    """Random weights (kernel, bias per layer) and a regression batch."""
    rng = np.random.default_rng(problem["seed"])
    sizes = [problem["input_dim"]] + problem["widths"]
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        weights.append(rng.normal(scale=0.8, size=(fan_in, fan_out)))
        weights.append(rng.normal(scale=0.3, size=(fan_out,)))
    weights = [w.astype("float32") for w in weights]
    x = rng.normal(size=(problem["batch"], problem["input_dim"]))
    y = rng.normal(size=(problem["batch"], problem["widths"][-1]))
    return weights, x.astype("float32"), y.astype("float32")


def network(problem, weights):
    """The Keras network: tanh hidden layers, a linear output layer."""
    widths = problem["widths"]
    layers = [keras.Input((problem["input_dim"],))]
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        layers.append(
            keras.layers.Dense(width, activation=None if last else "tanh")
        )
    model = keras.Sequential(layers)
    for variable, value in zip(model.trainable_variables, weights):
        variable.assign(value)
    return model


# ------------------------------------------------------ hand computation


def hand_loss(weights, x, y):
    """Mean squared error of the tanh MLP, as Keras' "mse" reduces it."""
    h = x
    for i in range(0, len(weights), 2):
        h = h @ weights[i] + weights[i + 1]
        if i + 2 < len(weights):
            h = tf.tanh(h)
    return tf.reduce_mean(tf.reduce_mean(tf.square(h - y), axis=-1))


def hand_gradient(weights, x, y):
    weights = [tf.constant(w, tf.float32) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        value = hand_loss(weights, x, y)
    return [g.numpy().astype(np.float64) for g in tape.gradient(value, weights)]


def hand_dual_vector(grads, rho, p):
    """eps = rho sign(g) |g|^(q-1) / (||g||_q^q)^(1/p), 1/p + 1/q = 1."""
    if math.isinf(p):
        return [rho * np.sign(g) for g in grads]
    q = p / (p - 1.0)
    total = sum(np.sum(np.abs(g) ** q) for g in grads)
    if total == 0.0:
        return [np.zeros_like(g) for g in grads]
    scale = total ** (1.0 / p)
    return [rho * np.sign(g) * np.abs(g) ** (q - 1.0) / scale for g in grads]


def hand_sam_gradient(weights, x, y, rho, p, m):
    """Mean over groups of m examples of each group's SAM gradient."""
    m = m or len(x)
    parts = []
    for start in range(0, len(x), m):
        xs, ys = x[start : start + m], y[start : start + m]
        eps = hand_dual_vector(hand_gradient(weights, xs, ys), rho, p)
        perturbed = [w + e for w, e in zip(weights, eps)]
        parts.append(hand_gradient(perturbed, xs, ys))
    return [np.mean(np.stack(group), axis=0) for group in zip(*parts)]


def test_hand_dual_vector_reaches_hoelders_bound():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 2)), rng.normal(size=(4,))]
    flat = np.concatenate([g.ravel() for g in grads])
    for p in (2.0, 3.0, math.inf):
        eps = np.concatenate(
            [e.ravel() for e in hand_dual_vector(grads, 0.7, p)]
        )
        q = 1.0 if math.isinf(p) else p / (p - 1.0)
        np.testing.assert_allclose(np.linalg.norm(eps, ord=p), 0.7)
        np.testing.assert_allclose(eps @ flat,
                                   0.7 * np.linalg.norm(flat, ord=q))


# ------------------------------------------------------------ properties


def fit_one_step(model, x, y, optimizer):
    model.compile(optimizer=optimizer, loss="mse")
    logs = model.fit(x, y, batch_size=len(x), shuffle=False, verbose=0)
    return [v.numpy() for v in model.trainable_variables], logs.history


@PROPERTY_SETTINGS
@given(problems())
def test_one_step_matches_the_hand_computation(problem):
    weights, x, y = weights_and_data(problem)
    sam = keras_sam.SAMModel.from_model(
        network(problem, weights),
        rho=problem["rho"], m=problem["m"], p=problem["p"],
    )
    actual, logs = fit_one_step(
        sam, x, y, keras.optimizers.SGD(LEARNING_RATE)
    )
    assert all(np.isfinite(w).all() for w in actual)
    assert all(np.isfinite(v[0]) for v in logs.values())

    g = hand_sam_gradient(
        weights, x, y, problem["rho"], problem["p"], problem["m"]
    )
    for a, w, grad in zip(actual, weights, g):
        np.testing.assert_allclose(
            a, w - LEARNING_RATE * grad, atol=2e-5, rtol=1e-4
        )


@settings(PROPERTY_SETTINGS, max_examples=6)
@given(problems(rho=0.0))
def test_rho_zero_is_the_base_optimizer(problem):
    weights, x, y = weights_and_data(problem)

    def train(model):
        # Eager (no tracing) to keep it fast; the step is the same code.
        model.compile(
            optimizer=keras.optimizers.Adam(0.05), loss="mse",
            run_eagerly=True,
        )
        model.fit(x, y, batch_size=len(x), epochs=2, shuffle=False,
                  verbose=0)
        return [v.numpy() for v in model.trainable_variables]

    plain = train(network(problem, weights))
    sam = train(
        keras_sam.SAMModel.from_model(
            network(problem, weights), rho=0.0, m=problem["m"],
            p=problem["p"],
        )
    )
    for s, b in zip(sam, plain):
        assert np.isfinite(s).all()
        np.testing.assert_allclose(s, b, atol=1e-6, rtol=1e-6)
