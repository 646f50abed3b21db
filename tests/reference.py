"""An independent reference implementation of SAM for the tests.

Written by hand in NumPy (float64), with the network's gradient derived
on paper, and deliberately importing neither keras_sam nor a Keras
backend: the tests compare keras_sam's steps, on any backend, against
these hand computations of Foret et al.'s Algorithm 1.

The reference network is the one `tiny_layers` builds in Keras:
x -> Dense(5, tanh, L2(l2) on the kernel) -> Dense(3) logits, trained with
sparse softmax cross-entropy averaged over the batch.
"""

import keras
import numpy as np

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


def _float64(tensors):
    return [np.asarray(t, np.float64) for t in tensors]


def forward(weights, x):
    """The hidden activations and the logits at `weights`."""
    kernel1, bias1, kernel2, bias2 = _float64(weights)
    hidden = np.tanh(np.asarray(x, np.float64) @ kernel1 + bias1)
    return hidden, hidden @ kernel2 + bias2


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def loss(weights, x, y, sample_weight=None):
    """The compiled loss of the reference network: cross-entropy summed
    over the batch and divided by its size (Keras'
    "sum_over_batch_size"), plus the kernel's L2 penalty."""
    _, logits = forward(weights, x)
    per_example = -_log_softmax(logits)[np.arange(len(y)), np.asarray(y)]
    if sample_weight is not None:
        per_example = per_example * np.asarray(sample_weight, np.float64)
    penalty = L2 * np.sum(np.square(np.asarray(weights[0], np.float64)))
    return np.sum(per_example) / len(y) + penalty


def output_gradient(weights, x, y, sample_weight=None):
    """dL/dlogits: (softmax - one_hot(y)) / n, times the sample weights."""
    _, logits = forward(weights, x)
    d_logits = np.exp(_log_softmax(logits))
    d_logits[np.arange(len(y)), np.asarray(y)] -= 1.0
    if sample_weight is not None:
        d_logits *= np.asarray(sample_weight, np.float64)[:, None]
    return d_logits / len(y)


def vjp(weights, x, cotangent):
    """The gradient over the weights of <cotangent, logits> + the L2
    penalty, by the chain rule through the two layers."""
    kernel1, _, kernel2, _ = _float64(weights)
    hidden, _ = forward(weights, x)
    cotangent = np.asarray(cotangent, np.float64)
    d_hidden = (cotangent @ kernel2.T) * (1.0 - np.square(hidden))
    return [
        np.asarray(x, np.float64).T @ d_hidden + 2.0 * L2 * kernel1,
        d_hidden.sum(axis=0),
        hidden.T @ cotangent,
        cotangent.sum(axis=0),
    ]


def gradient(weights, x, y, sample_weight=None):
    """grad L(weights)."""
    return vjp(weights, x, output_gradient(weights, x, y, sample_weight))


def sam_gradient(weights, x, y, rho, sample_weight=None):
    """Algorithm 1: the gradient at w + rho g / ||g||_2 (g at w)."""
    grads = gradient(weights, x, y, sample_weight)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads))
    perturbed = [w + rho * g / norm for w, g in zip(_float64(weights), grads)]
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
        updated.append(w - alpha * m / (np.sqrt(v) + epsilon))
    return updated
