"""Tests of keras_sam.hessian against analytic and finite-difference values."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sam.diagnostics import hessian


def _linear_model(inputs, outputs, use_bias):
    model = keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(outputs, use_bias=use_bias)]
    )
    model.compile(loss="mse")
    return model


def _analytic_hessian(x, outputs, use_bias):
    """2/(n o) kron([x 1]'[x 1], I_o): Keras' MSE, weights in Keras order.

    The kernel (d, o) flattens row-major to index i * o + j, and the bias
    follows as the feature d, so the parameter (feature i, output j) has the
    index i * o + j.
    """
    n = len(x)
    features = np.hstack([x, np.ones((n, 1))]) if use_bias else x
    gram = features.T.astype(np.float64) @ features
    return 2.0 / (n * outputs) * np.kron(gram, np.eye(outputs))


@pytest.fixture(params=[False, True], ids=["no_bias", "bias"])
def quadratic(request):
    """A linear model with MSE on 20 examples: its loss is quadratic."""
    use_bias, inputs, outputs = request.param, 3, 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, inputs)).astype("float32")
    y = rng.normal(size=(20, outputs)).astype("float32")
    model = _linear_model(inputs, outputs, use_bias)
    return model, (x, y), _analytic_hessian(x, outputs, use_bias)


def test_hvp_of_quadratic_matches_analytic_hessian(quadratic):
    model, data, h = quadratic
    v = np.random.default_rng(1).normal(size=len(h))
    # batch_size 8 gives batches of 8, 8 and 4: the weighting is exercised.
    operator = hessian.HessianOperator(model, data, batch_size=8)
    np.testing.assert_allclose(operator.matvec(v), h @ v, rtol=1e-5, atol=1e-5)


def test_lanczos_recovers_spectrum_with_multiplicity(quadratic):
    model, data, h = quadratic
    expected = np.sort(np.linalg.eigvalsh(h))[::-1]
    # Every eigenvalue is double (two outputs): Lanczos must restart to see
    # both copies, which num_iters = dim allows.
    result = hessian.top_hessian_eigenvalues(
        model, data, k=5, num_iters=len(h), batch_size=8
    )
    np.testing.assert_allclose(result.eigenvalues, expected[:5], rtol=1e-4)
    assert result.lambda_max == pytest.approx(expected[0], rel=1e-4)
    assert result.lambda_ratio == pytest.approx(
        expected[0] / expected[4], rel=1e-3
    )


def test_lanczos_top_eigenvalue_converges_before_dim():
    # A 40 x 40 diagonal operator with a clear gap at the top.
    diagonal = np.concatenate([[10.0, 6.0], np.linspace(0.0, 3.0, 38)])
    t = hessian.lanczos_tridiagonal(lambda v: diagonal * v, 40, num_iters=15)
    ritz = np.sort(np.linalg.eigvalsh(t))[::-1]
    np.testing.assert_allclose(ritz[:2], [10.0, 6.0], rtol=1e-6)


def test_hutchinson_is_exact_for_diagonal_hessian():
    # Orthogonal columns and no bias: H = 2/n x'x is diagonal, and every
    # Rademacher probe gives z'Hz = trace(H) exactly.
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(16, 4)))
    x = (q * np.array([1.0, 2.0, 3.0, 4.0])).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    h = _analytic_hessian(x, 1, use_bias=False)
    assert np.abs(h - np.diag(np.diag(h))).max() < 1e-6
    result = hessian.hutchinson_trace(
        _linear_model(4, 1, False), (x, y), num_probes=3
    )
    np.testing.assert_allclose(result.samples, np.trace(h), rtol=1e-5)


def test_hutchinson_is_within_its_standard_error(quadratic):
    model, data, h = quadratic
    num_probes = 200
    # Variance of z'Hz for Rademacher z: 2 * sum_{i != j} H_ij^2.
    variance = 2.0 * (np.sum(h**2) - np.sum(np.diag(h) ** 2))
    tolerance = 4.0 * np.sqrt(variance / num_probes) + 1e-4
    result = hessian.hutchinson_trace(
        model, data, num_probes=num_probes, seed=3
    )
    assert abs(result.trace - np.trace(h)) < tolerance
    assert result.std_error == pytest.approx(
        np.sqrt(variance / num_probes), rel=0.3
    )


@pytest.fixture
def float64():
    """float64 layers, so that finite differences are accurate."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")  # the losses' dtype
    keras.config.set_dtype_policy("float64")  # the layers'
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("normalization", [False, True], ids=["mlp", "bn"])
def test_hvp_matches_finite_differences(float64, normalization):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 4))
    y = rng.integers(0, 3, size=20)
    layers = [keras.Input((4,)), keras.layers.Dense(6, activation="tanh")]
    if normalization:
        # Inference mode: moving statistics, no dropout.
        layers += [keras.layers.BatchNormalization(), keras.layers.Dropout(0.5)]
    model = keras.Sequential(layers + [keras.layers.Dense(3)])
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    if normalization:
        bn = model.layers[1]
        bn.moving_mean.assign(rng.normal(size=6))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=6))
    weights = model.get_weights()
    v = [rng.normal(size=w.shape) for w in model.trainable_weights]

    def gradient(step):
        # Independent: assign the shifted weights, full batch, model(x).
        model.set_weights(weights)
        for var, d in zip(model.trainable_variables, v):
            var.assign(var + step * d)
        with tf.GradientTape() as tape:
            loss = model.loss(y, model(x, training=False))
        grads = tape.gradient(loss, model.trainable_variables)
        model.set_weights(weights)
        return [g.numpy() for g in grads]

    h = 1e-4
    expected = [
        (gp - gm) / (2 * h) for gp, gm in zip(gradient(h), gradient(-h))
    ]
    product = hessian.hessian_vector_product(model, (x, y), v, batch_size=7)
    for p, e in zip(product, expected):
        np.testing.assert_allclose(p, e, rtol=1e-5, atol=1e-7)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_uncompiled_model_needs_loss_fn():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    data = (np.ones((4, 2), "float32"), np.ones((4, 1), "float32"))
    with pytest.raises(ValueError, match="loss_fn"):
        hessian.hutchinson_trace(model, data, num_probes=1)
    # An explicit callable loss works on the same uncompiled model.
    result = hessian.hutchinson_trace(
        model, data, num_probes=1,
        loss_fn=lambda y, p: tf.reduce_mean((y - p) ** 2, axis=-1),
    )
    # H = 2/n [x 1]'[x 1] with x = 1: every entry 2, trace 2 * 3 = 6 and
    # z'Hz = 2 (sum z)^2, so the single probe is 2 * (sum z)^2.
    assert result.trace in (pytest.approx(2.0), pytest.approx(18.0))
