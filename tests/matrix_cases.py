"""The generated matrix's cases: layer families x SAM options.

Backend-neutral (Keras only), so that the same cases run on TensorFlow
(`tests/core/test_oracle_matrix.py`, against the float64 oracle) and, in a
process of their own, on JAX and PyTorch (`tests/backend_run.py`, whose
results `tests/test_cross_backend.py` checks against the same oracle).
Each case builds a small functional `keras_sam.SAMModel` ending in Dense
logits over 3 classes and takes one full-batch step with
`SGD(learning_rate=1.0)`, so the new weights are w - g_sam.
"""

import math
from typing import Callable, NamedTuple

import keras
import numpy as np
from keras import layers
from keras import ops

import keras_sam

RHO = 0.3
CLASSES = 3
BATCH = 8
ATOL = RTOL = 2e-5
DISTINCT = 50 * ATOL
JITTER = 0.1  # std of the noise added to the initial weights

# Sequences of tokens with padding (0) repeated many times, and tokens
# repeated within an example (3, 7, 2, ...) and across examples; tokens 10
# and 11 of the vocabulary are never used (zero gradient rows).
TOKENS = np.array(
    [
        [0, 0, 0, 0, 3, 3],
        [0, 0, 1, 3, 7, 7],
        [0, 0, 0, 2, 2, 2],
        [0, 5, 5, 1, 1, 9],
        [0, 0, 0, 0, 0, 4],
        [3, 3, 3, 8, 8, 1],
        [0, 0, 6, 6, 2, 3],
        [0, 0, 0, 7, 9, 9],
    ],
    dtype="int32",
)
VOCABULARY = 12


class ScaledLinear(keras.layers.Layer):
    """A custom layer: y = (x @ kernel) * scale + shift_bias (keras.ops)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(dim, self.units), initializer="glorot_uniform",
            name="kernel",
        )
        self.scale = self.add_weight(
            shape=(self.units,), initializer="ones", name="scale"
        )
        self.shift_bias = self.add_weight(
            shape=(self.units,), initializer="zeros", name="shift_bias"
        )

    def call(self, x):
        return ops.matmul(x, self.kernel) * self.scale + self.shift_bias


# ------------------------------------------------------------ families


class Family(NamedTuple):
    """A layer family: its graph `(inputs, outputs)` and example shape
    (None: the token batch `TOKENS`)."""

    graph: Callable
    shape: tuple = None


def _logits(inputs, hidden):
    return inputs, layers.Dense(CLASSES)(hidden)


def _dense():
    inputs = keras.Input((5,))
    hidden = layers.Dense(
        6, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01)
    )(inputs)
    return _logits(inputs, hidden)


def _einsum_dense():
    inputs = keras.Input((3, 4))
    hidden = layers.EinsumDense(
        "abc,cd->abd", output_shape=(3, 5), bias_axes="d",
        activation="tanh",
    )(inputs)
    return _logits(inputs, layers.Flatten()(hidden))


def _convolution(shape, layer):
    """A family `inputs -> layer -> tanh -> flatten -> logits`."""

    def graph():
        inputs = keras.Input(shape)
        hidden = layers.Activation("tanh")(layer()(inputs))
        return _logits(inputs, layers.Flatten()(hidden))

    return Family(graph, shape)


def _embedding():
    inputs = keras.Input((TOKENS.shape[1],), dtype="int32")
    hidden = layers.Embedding(VOCABULARY, 4)(inputs)
    return _logits(inputs, layers.GlobalAveragePooling1D()(hidden))


def _embedding_gru():
    inputs = keras.Input((TOKENS.shape[1],), dtype="int32")
    hidden = layers.Embedding(VOCABULARY, 4, mask_zero=True)(inputs)
    return _logits(inputs, layers.GRU(4)(hidden))


def _recurrent(layer):
    def graph():
        inputs = keras.Input((4, 3))
        return _logits(inputs, layer()(inputs))

    return Family(graph, (4, 3))


def _attention():
    inputs = keras.Input((4, 6))
    hidden = layers.MultiHeadAttention(num_heads=2, key_dim=3)(inputs, inputs)
    return _logits(inputs, layers.GlobalAveragePooling1D()(hidden))


def _normalized(layer):
    """A family `inputs -> Dense -> layer -> tanh -> logits`."""

    def graph():
        inputs = keras.Input((5,))
        hidden = layer()(layers.Dense(6)(inputs))
        return _logits(inputs, layers.Activation("tanh")(hidden))

    return Family(graph, (5,))


def _custom():
    inputs = keras.Input((5,))
    hidden = layers.Activation("tanh")(ScaledLinear(6)(inputs))
    return _logits(inputs, hidden)


FAMILIES = {
    "dense": Family(_dense, (5,)),
    "einsum_dense": Family(_einsum_dense, (3, 4)),
    "conv1d": _convolution((6, 2), lambda: layers.Conv1D(3, 3)),
    "conv2d": _convolution((5, 5, 2), lambda: layers.Conv2D(3, 3)),
    "conv3d": _convolution((4, 4, 4, 1), lambda: layers.Conv3D(2, 3)),
    "conv2d_transpose": _convolution(
        (3, 3, 2), lambda: layers.Conv2DTranspose(2, 2, strides=2)
    ),
    "depthwise_conv2d": _convolution(
        (5, 5, 2), lambda: layers.DepthwiseConv2D(3, depth_multiplier=2)
    ),
    "separable_conv2d": _convolution(
        (5, 5, 2), lambda: layers.SeparableConv2D(3, 3)
    ),
    "embedding": Family(_embedding),
    "embedding_masked_gru": Family(_embedding_gru),
    "lstm": _recurrent(lambda: layers.LSTM(4)),
    "gru": _recurrent(lambda: layers.GRU(4)),
    "bidirectional_lstm": _recurrent(
        lambda: layers.Bidirectional(layers.LSTM(3))
    ),
    "multi_head_attention": Family(_attention, (4, 6)),
    "batch_normalization": _normalized(
        lambda: layers.BatchNormalization(momentum=0.5)
    ),
    "layer_normalization": _normalized(layers.LayerNormalization),
    "group_normalization": _normalized(
        lambda: layers.GroupNormalization(groups=2)
    ),
    "custom_layer": Family(_custom, (5,)),
}

# ------------------------------------------------------------- options

OPTIONS = {
    "sam": {},
    "p_inf": {"p": math.inf},
    "asam": {"adaptive": True, "eta": 0.01},
    # 0.2, not 0.5: with half of the weights kept, the dropped half holds
    # under 1% of ||g|| in the recurrent and embedding families, and a
    # step that ignored the mask would pass (see `assert_well_posed`).
    "sparse_fisher": {"perturbed_fraction": 0.2, "mask": "fisher"},
    "m2": {"m": 2},
    "m3_with_leftover": {"m": 3},  # groups of 3, 3 and 2
    "m1": {"m": 1},
    "ascent_steps_2": {"ascent_steps": 2},
    "second_order": {"second_order": True},
    "random": {"perturbation": "random", "seed": 7},
    "logit": {"gradient_rule": "logit"},
    "jacobian": {"gradient_rule": "jacobian"},
}

# ------------------------------------------------------------- helpers


def batch(family):
    """The family's inputs and labels (`BATCH` examples)."""
    rng = np.random.default_rng(0)
    shape = FAMILIES[family].shape
    x = TOKENS if shape is None else rng.normal(size=(BATCH, *shape))
    y = rng.integers(0, CLASSES, size=BATCH).astype("int32")
    return np.asarray(x, "float32" if shape else "int32"), y


def sam_model(family, options):
    """The family as a compiled SAMModel with jittered initial weights."""
    model = keras_sam.SAMModel(*FAMILIES[family].graph(), rho=RHO, **options)
    rng = np.random.default_rng(1)
    for v in model.trainable_variables:
        value = keras.ops.convert_to_numpy(v)
        v.assign(value + rng.normal(scale=JITTER, size=v.shape))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=False,
        # TensorFlow: the graph, not XLA (a recurrent layer's loop compiles
        # slowly); JAX: jit, as Keras' JAX trainer does by default.
        jit_compile=keras.backend.backend() == "jax",
    )
    return model


def train_one_step(model, x, y) -> dict:
    """One full-batch `fit` step; the logs of its epoch."""
    history = model.fit(
        x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0
    )
    return {key: values[-1] for key, values in history.history.items()}
