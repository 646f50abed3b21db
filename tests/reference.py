"""An independent reference implementation of SAM for the tests.

Written with plain TensorFlow ops on an explicit list of weights, and
deliberately not importing keras_sam: the tests compare keras_sam's steps
against these hand computations of Foret et al.'s Algorithm 1.

The reference network is the one `tiny_mlp` builds in Keras:
x -> Dense(5, tanh, L2(l2) on the kernel) -> Dense(3) logits, trained with
sparse softmax cross-entropy averaged over the batch.
"""

import keras
import numpy as np
import tensorflow as tf

L2 = 0.01
INPUT_DIM, HIDDEN, CLASSES = 4, 5, 3


def tiny_layers():
    """The Keras layers of the reference network (fresh, unbuilt)."""
    return [
        keras.layers.Dense(
            HIDDEN,
            activation="tanh",
            kernel_regularizer=keras.regularizers.L2(L2),
        ),
        keras.layers.Dense(CLASSES),
    ]


def tiny_data(n=8, seed=0):
    """A small classification batch: float32 inputs and int labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, INPUT_DIM)).astype("float32")
    y = rng.integers(0, CLASSES, size=n).astype("int32")
    return x, y


def loss(weights, x, y, sample_weight=None):
    """The compiled loss of the reference network, written by hand."""
    kernel1, bias1, kernel2, bias2 = weights
    hidden = tf.tanh(x @ kernel1 + bias1)
    logits = hidden @ kernel2 + bias2
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
    if sample_weight is not None:
        per_example = per_example * sample_weight
    # Keras' "sum_over_batch_size": divide by the batch size.
    n = tf.cast(tf.shape(x)[0], per_example.dtype)
    data_loss = tf.reduce_sum(per_example) / n
    return data_loss + L2 * tf.reduce_sum(tf.square(kernel1))


def gradient(weights, x, y, sample_weight=None):
    weights = [tf.convert_to_tensor(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        value = loss(weights, x, y, sample_weight)
    return tape.gradient(value, weights)


def sam_gradient(weights, x, y, rho, sample_weight=None):
    """Algorithm 1: the gradient at w + rho g / ||g||_2 (g at w)."""
    grads = gradient(weights, x, y, sample_weight)
    norm = tf.sqrt(sum(tf.reduce_sum(g**2) for g in grads))
    perturbed = [w + rho * g / norm for w, g in zip(weights, grads)]
    return gradient(perturbed, x, y, sample_weight)


def grouped_sam_gradient(weights, x, y, rho, group_size):
    """The SAM gradients of consecutive groups of `group_size` (the last
    one smaller if `len(y)` is not a multiple), each weighted by its share
    of the batch: the batch loss is the size-weighted mean of the groups'
    mean losses, so with equal groups this is their plain mean."""
    starts = range(0, len(y), group_size)
    groups = [
        sam_gradient(weights, x[i : i + group_size], y[i : i + group_size], rho)
        for i in starts
    ]
    shares = [len(y[i : i + group_size]) / len(y) for i in starts]
    return [
        sum(share * g for share, g in zip(shares, parts))
        for parts in zip(*groups)
    ]


def sgd_update(weights, grads, learning_rate):
    return [w - learning_rate * g for w, g in zip(weights, grads)]


def adam_update(weights, grads, learning_rate, beta1=0.9, beta2=0.999):
    """The first step of Adam (Kingma and Ba 2015) from zero moments."""
    epsilon = 1e-7  # Keras' default
    updated = []
    for w, g in zip(weights, grads):
        m = (1 - beta1) * g
        v = (1 - beta2) * g**2
        alpha = learning_rate * np.sqrt(1 - beta2) / (1 - beta1)
        updated.append(w - alpha * m / (tf.sqrt(v) + epsilon))
    return updated
