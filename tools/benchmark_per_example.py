"""Step time of 1-SAM's closed-form path against the grouped path and SAM.

Times one training step (gradients and the optimizer's update) compiled as
one `tf.function` per method, interleaving the methods over `--rounds`
rounds of `--steps` steps and reporting each method's median seconds per
step and its ratio to SAM:

- sgd: the base optimizer's gradient;
- sam: SAM with one eps for the whole batch (`m=None`);
- sam_1_grouped: 1-SAM (m = 1) mapped over examples, one weight copy each
  (`keras_sam.core.tensorflow.sam_gradients` with the closed form off);
- sam_1, lsam_1, jsam_1: 1-SAM, L-SAM and J-SAM by
  `keras_sam.core.per_example` (rank-one per-example gradients).

Models: "mlp" is the demo MLP (64-128-128-10, ReLU); "transformer" is
`transformer_classifier`, a small Transformer encoder classifier (two
blocks of 4-head self-attention and a GELU MLP on 8 tokens of 8 features);
"mixer" is `mixer_classifier`, its attention-free MLP-Mixer counterpart.

Usage (from the repository root):

    python tools/benchmark_per_example.py --model=mlp --batch_size=128
    python tools/benchmark_per_example.py --model=transformer --nojit
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags

import keras
import numpy as np
import tensorflow as tf

from keras_sam.backend.tensorflow import per_example
from keras_sam.backend.tensorflow import step as backend
from keras_sam.core.options import SAMOptions

# Run as `python tools/<tool>.py`: `experiments` is in the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import models  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags (defined when run, not when imported)."""
    flags.DEFINE_enum(
        "model", "mlp", ["mlp", "mixer", "transformer"], "Model."
    )
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_integer("steps", 20, "Steps per measurement.")
    flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
    flags.DEFINE_bool("jit", True, "Compile the steps with XLA.")
    flags.DEFINE_list(
        "methods", "sgd,sam,sam_1_grouped,sam_1,lsam_1,jsam_1", "Methods."
    )


def mixer_classifier(tokens=8, channels=8, classes=10, width=32, blocks=2):
    """An MLP-Mixer classifier: Dense, LayerNormalization and residuals.

    A Transformer block with its attention replaced by an MLP over the
    tokens (token mixing), then an MLP over the features (channel mixing),
    each behind LayerNormalization and a residual connection. Every layer
    with weights is Dense or LayerNormalization, so 1-SAM takes
    `keras_sam.core.per_example`'s closed form; attention (softmax over
    tokens of products of two projections) is not covered by it.

    Args:
        tokens, channels: The shape of one example, `(tokens, channels)`.
        classes: Number of logits.
        width: Features per token inside the blocks.
        blocks: Number of Mixer blocks.

    Returns:
        A functional `keras.Model` from `(tokens, channels)` to logits.

    References:
        Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision",
        NeurIPS 2021.
    """
    layers = keras.layers

    def token_mixing(x):
        y = layers.Permute((2, 1))(x)
        y = layers.Dense(2 * tokens, activation="gelu")(y)
        return layers.Permute((2, 1))(layers.Dense(tokens)(y))

    return _pre_norm_classifier(
        token_mixing, tokens, channels, classes, width, blocks
    )


def transformer_classifier(
    tokens=8, channels=8, classes=10, width=32, heads=4, blocks=2,
    causal=False,
):
    """A small Transformer encoder classifier.

    Pre-norm blocks: LayerNormalization, MultiHeadAttention (self-attention,
    `heads` heads of width // heads) and a residual, then LayerNormalization,
    a two-layer GELU MLP and a residual; mean pooling over the tokens and a
    Dense head. Every weighted layer is Dense, MultiHeadAttention or
    LayerNormalization, so 1-SAM takes `keras_sam.core.per_example`'s
    closed form.

    Args:
        tokens, channels: The shape of one example, `(tokens, channels)`.
        classes: Number of logits.
        width: Features per token inside the blocks.
        heads: Attention heads per block.
        blocks: Number of Transformer blocks.
        causal: Whether attention is causal (`use_causal_mask=True`).

    Returns:
        A functional `keras.Model` from `(tokens, channels)` to logits.

    References:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """
    def attention(x):
        return keras.layers.MultiHeadAttention(heads, width // heads)(
            x, x, use_causal_mask=causal
        )

    return _pre_norm_classifier(
        attention, tokens, channels, classes, width, blocks
    )


def _pre_norm_classifier(token_mixing, tokens, channels, classes, width,
                         blocks):
    """Pre-norm residual blocks of `token_mixing` and a GELU MLP, then mean
    pooling and a Dense head: the Mixer and the Transformer above."""
    layers = keras.layers
    inputs = keras.Input((tokens, channels))
    x = layers.Dense(width)(inputs)
    for _ in range(blocks):
        y = token_mixing(layers.LayerNormalization()(x))
        x = layers.Add()([x, y])
        y = layers.Dense(2 * width, activation="gelu")(
            layers.LayerNormalization()(x)
        )
        x = layers.Add()([x, layers.Dense(width)(y)])
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(x))
    return keras.Model(inputs, layers.Dense(classes)(x))


def build_model(name):
    """A fresh compiled model and the shape of one example."""
    keras.utils.set_random_seed(0)
    if name == "mlp":  # the demo model: digits, 64-128-128-10
        shape = (64,)
        model = models.mlp(shape, 10)
    elif name == "transformer":
        shape = (8, 8)
        model = transformer_classifier()
    else:
        shape = (8, 8)
        model = mixer_classifier()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, shape
def gradient_fn(method, model, rho):
    """`grads(x, y)` of `method`, for `model.trainable_variables`."""
    rule = {"lsam_1": "logit", "jsam_1": "jacobian"}.get(method, "sam")
    if method == "sgd":

        def sgd(x, y):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model.compute_loss(x, y, y_pred, training=True)
            return tape.gradient(loss, model.trainable_variables)

        return sgd
    if method in ("sam", "sam_1_grouped"):
        options = SAMOptions(m=1 if method == "sam_1_grouped" else None)
        return lambda x, y: backend.sam_gradients(
            model, options, rho, x, y
        )[0].grads
    return lambda x, y: per_example.per_example_sam_gradients(
        model, x, y, rho=rho, gradient_rule=rule
    ).grads


def make_step(method, jit):
    """A compiled training step of `method` on a fresh model."""
    model, _ = build_model(FLAGS.model)
    rho = tf.Variable(0.05, trainable=False)
    grads = gradient_fn(method, model, rho)

    @tf.function(jit_compile=jit)
    def train_step(x, y):
        model.optimizer.apply(grads(x, y), model.trainable_variables)
        return model.optimizer.iterations

    return train_step


def median_times(methods, x, y, rounds, steps):
    """Seconds per step of every method, interleaved over the rounds."""
    supported = per_example.supported
    per_example.supported = lambda *args: False  # the grouped path, always
    try:
        functions = {m: make_step(m, FLAGS.jit) for m in methods}
        for train_step in functions.values():
            int(train_step(x, y))  # traces and compiles
    finally:
        per_example.supported = supported
    times = {method: [] for method in methods}
    for _ in range(rounds):
        for method, train_step in functions.items():
            start = time.perf_counter()
            for _ in range(steps):
                iterations = train_step(x, y)
            int(iterations)  # waits for the device
            times[method].append((time.perf_counter() - start) / steps)
    return {method: statistics.median(t) for method, t in times.items()}


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")  # one tf.function per method
    _, shape = build_model(FLAGS.model)
    rng = np.random.default_rng(0)
    n = FLAGS.batch_size
    x = tf.constant(rng.normal(size=(n, *shape)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=n))
    times = median_times(FLAGS.methods, x, y, FLAGS.rounds, FLAGS.steps)
    sam = times.get("sam", float("nan"))
    print(f"{FLAGS.model}, batch {n}, jit={FLAGS.jit}")
    for method, seconds in times.items():
        ratio = seconds / sam
        print(f"{method:14s} {seconds * 1e3:8.3f} ms  {ratio:6.2f}x SAM")


if __name__ == "__main__":
    define_flags()
    app.run(main)
