"""Regularised SGD (Baek et al. eq. 4.5) against a hand computation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sam import regularization
from tests import reference

GAMMA_Z, GAMMA_V, LEARNING_RATE = 0.05, 0.02, 0.1


def network():
    net = keras.Sequential(
        [
            keras.Input((reference.INPUT_DIM,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )
    rng = np.random.default_rng(0)
    for variable in net.trainable_variables:
        variable.assign(rng.normal(scale=0.5, size=variable.shape))
    return net


def hand_loss(weights, x, y):
    kernel1, bias1, kernel2, bias2 = weights
    z = tf.tanh(x @ kernel1 + bias1)
    logits = z @ kernel2 + bias2
    data = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
    )
    feature = GAMMA_Z * tf.reduce_mean(tf.norm(z, axis=1))
    return data + feature + GAMMA_V * tf.reduce_sum(kernel2**2)


def test_one_sgd_step_descends_the_penalised_loss():
    x, y = reference.tiny_data()
    model = regularization.regularized_sgd_model(network(), GAMMA_Z, GAMMA_V)
    start = [v.numpy() for v in model.trainable_variables]
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    loss = model.evaluate(x, y, batch_size=8, verbose=0)
    np.testing.assert_allclose(loss, float(hand_loss(start, x, y)), rtol=1e-5)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    weights = [tf.constant(w) for w in start]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        value = hand_loss(weights, x, y)
    expected = [
        w - LEARNING_RATE * g for w, g in zip(start, tape.gradient(value, weights))
    ]
    for actual, wanted in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(actual.numpy(), wanted, atol=1e-6)


def test_penalties_survive_a_keras_round_trip(tmp_path):
    x, y = reference.tiny_data()
    model = regularization.regularized_sgd_model(network(), GAMMA_Z, GAMMA_V)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    path = str(tmp_path / "regularized.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0),
        rtol=1e-6,
    )


@pytest.mark.parametrize("gammas", [(-1.0, 0.0), (0.0, float("nan")), ("a", 0)])
def test_bad_gammas_are_refused(gammas):
    with pytest.raises(ValueError, match="must be a number >= 0"):
        regularization.regularized_sgd_model(network(), *gammas)


def test_a_model_without_a_kernel_head_is_refused():
    net = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Softmax()]
    )
    with pytest.raises(ValueError, match="must have a kernel"):
        regularization.regularized_sgd_model(net, 0.1, 0.1)
