"""1-SAM in closed form (`keras_sam.core.per_example`) against references.

(a) Algorithm 1 run example by example in plain TensorFlow (the SAM, L-SAM
and J-SAM gradients of Baek et al. eq. 2.6, 2.8 and 2.9, averaged), on a
hand-written network and on Keras graphs evaluated with `stateless_call`;
(b) the grouped step that `SAMModel(m=1)` takes, one weight copy per
example. No timing is asserted here (see tools/benchmark_per_example.py).
"""

import functools
import importlib.util
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from keras_sam.backend.tensorflow import per_example
from keras_sam.backend.tensorflow import step as backend
from keras_sam.core.options import SAMOptions
from tests.helpers import mirrored

RHO = 0.1
RULES = ("sam", "logit", "jacobian")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 3))


@functools.lru_cache(maxsize=None)
def benchmark_tool():
    """tools/benchmark_per_example.py, imported (its flags are not)."""
    path = os.path.join(ROOT, "tools", "benchmark_per_example.py")
    spec = importlib.util.spec_from_file_location("bench_per_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mixer():
    """A one-block MLP-Mixer (the benchmark's Transformer-style model)."""
    model = benchmark_tool().mixer_classifier(classes=3, width=8, blocks=1)
    return compiled(model)


def transformer(causal=False):
    """A one-block Transformer encoder (the benchmark's), 2 heads."""
    model = benchmark_tool().transformer_classifier(
        classes=3, width=8, heads=2, blocks=1, causal=causal
    )
    return compiled(model)


def cross_attention(**call_kwargs):
    """Attention of one sequence over another (key = value), with a
    sequence-level EinsumDense on the way in."""
    queries, values = keras.Input((5, 4)), keras.Input((3, 6))
    q = keras.layers.EinsumDense("abc,cd->abd", (None, 8), bias_axes="d")(
        queries
    )
    h = keras.layers.MultiHeadAttention(2, 3, value_dim=2)(
        q, values, **call_kwargs
    )
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    logits = keras.layers.Dense(3)(pooled)
    return compiled(keras.Model([queries, values], logits))


def compiled(model):
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def mlp():
    """x -> Dense(5, tanh) -> LayerNormalization -> Dense(3) logits."""
    return compiled(
        keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(5, activation="tanh"),
                keras.layers.LayerNormalization(epsilon=1e-3),
                keras.layers.Dense(3),
            ]
        )
    )


def hand_logits(weights, x):
    """`mlp`'s logits, written by hand."""
    kernel1, bias1, gamma, beta, kernel2, bias2 = weights
    hidden = tf.tanh(x @ kernel1 + bias1)
    mean, variance = tf.nn.moments(hidden, axes=[-1], keepdims=True)
    hidden = (hidden - mean) / tf.sqrt(variance + 1e-3) * gamma + beta
    return hidden @ kernel2 + bias2


def sequence_model():
    """Rank-3 inputs (5 positions), a frozen Dense, pooling, logits."""
    inputs = keras.Input((5, 4))
    h = keras.layers.Dense(6, activation="gelu")(inputs)
    frozen = keras.layers.Dense(6)
    frozen.trainable = False
    h = keras.layers.LayerNormalization()(frozen(h) + h)
    h = keras.layers.Dense(4, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return compiled(keras.Model(inputs, keras.layers.Dense(3)(h)))


def data(model, n=6, seed=0):
    rng = np.random.default_rng(seed)
    shapes = model.input_shape
    x = [
        tf.constant(rng.normal(size=(n, *shape[1:])).astype("float32"))
        for shape in (shapes if isinstance(shapes, list) else [shapes])
    ]
    x = x if isinstance(shapes, list) else x[0]
    y = rng.integers(0, 3, size=n).astype("int32")
    sample_weight = rng.uniform(0.5, 2.0, size=n).astype("float32")
    return x, tf.constant(y), tf.constant(sample_weight)


def one_example_sam(logits, weights, x, y, weight, rule):
    """One example's SAM, L-SAM or J-SAM gradient (Algorithm 1, m = 1)."""

    def loss_and_vjp(w, cotangent=None):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(w)
            f = logits(w, x)
            tape.watch(f)
            loss = weight * tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(y, f)
            )
        grads = tape.gradient(loss, w)
        if cotangent is not None:
            grads = tape.gradient(f, w, output_gradients=cotangent)
        return grads, tape.gradient(loss, f)

    grads, dloss_at_w = loss_and_vjp(weights)
    norm = tf.sqrt(sum(tf.reduce_sum(g**2) for g in grads))
    perturbed = [w + RHO * g / norm for w, g in zip(weights, grads)]
    if rule == "sam":
        return loss_and_vjp(perturbed)[0]
    if rule == "jacobian":
        return loss_and_vjp(perturbed, dloss_at_w)[0]
    _, dloss_perturbed = loss_and_vjp(perturbed)
    return loss_and_vjp(weights, dloss_perturbed)[0]


def algorithm_1(logits, weights, x, y, sample_weight, rule):
    """The mean over examples of their own SAM gradients, one by one."""
    per_example_grads = [
        one_example_sam(
            logits, weights, tf.nest.map_structure(lambda t: t[i : i + 1], x),
            y[i : i + 1], sample_weight[i], rule,
        )
        for i in range(int(y.shape[0]))
    ]
    return [tf.reduce_mean(tf.stack(g), 0) for g in zip(*per_example_grads)]


def stateless_logits(model):
    frozen = [v.value for v in model.non_trainable_variables]
    return lambda w, x: model.stateless_call(w, frozen, x, training=True)[0]


def assert_all_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), e.numpy(), **TOLERANCE)


@pytest.mark.parametrize("rule", RULES)
def test_dense_and_layer_norm_match_a_hand_written_loop(rule):
    model = mlp()
    x, y, sample_weight = data(model)
    result = per_example.per_example_sam_gradients(
        model, x, y, sample_weight, rho=RHO, gradient_rule=rule
    )
    weights = [v.value for v in model.trainable_variables]
    expected = algorithm_1(hand_logits, weights, x, y, sample_weight, rule)
    assert_all_close(result.grads, expected)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    "build",
    [
        sequence_model, mixer, transformer,
        functools.partial(transformer, causal=True), cross_attention,
    ],
)
def test_graphs_with_sequence_inputs_match_the_loop(build, rule):
    model = build()
    x, y, sample_weight = data(model)
    assert per_example.supported(model, SAMOptions(m=1, gradient_rule=rule))
    result = per_example.per_example_sam_gradients(
        model, x, y, sample_weight, rho=RHO, gradient_rule=rule
    )
    weights = [v.value for v in model.trainable_variables]
    expected = algorithm_1(
        stateless_logits(model), weights, x, y, sample_weight, rule
    )
    assert_all_close(result.grads, expected)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("build", [mixer, transformer])
def test_matches_the_grouped_step_of_sam_model(build, rule, monkeypatch):
    model = build()
    x, y, sample_weight = data(model, n=4)
    result = per_example.per_example_sam_gradients(
        model, x, y, sample_weight, rho=RHO, gradient_rule=rule
    )
    # The grouped path, also once the step dispatches m = 1 to the closed
    # form: one weight copy per example.
    monkeypatch.setattr(per_example, "supported", lambda *args: False)
    grouped, _ = backend.sam_gradients(
        model, SAMOptions(m=1, gradient_rule=rule), tf.constant(RHO),
        x, y, sample_weight,
    )
    assert_all_close(result.grads, grouped.grads)
    np.testing.assert_allclose(result.loss, grouped.loss, rtol=1e-5)
    stats = grouped.stats
    np.testing.assert_allclose(result.grad_norm, stats["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(
        result.loss_perturbed - result.loss, stats["sharpness"], atol=1e-5
    )


def test_compiles_with_xla_and_a_dynamic_batch():
    model = sequence_model()
    x, y, sample_weight = data(model)
    spec = [tf.TensorSpec([None, *t.shape[1:]], t.dtype) for t in (x, y)]

    @tf.function(jit_compile=True, input_signature=spec)
    def grads(x, y):
        return per_example.per_example_sam_gradients(model, x, y, rho=RHO).grads

    eager = per_example.per_example_sam_gradients(model, x, y, rho=RHO)
    assert_all_close(grads(x, y), eager.grads)


def test_a_zero_gradient_example_is_not_perturbed():
    """An example of weight 0 has g_i = 0: eps_i = 0, no NaN (as eq. 2)."""
    model = mlp()
    x, y, _ = data(model, n=2)
    sample_weight = tf.constant([1.0, 0.0])
    result = per_example.per_example_sam_gradients(
        model, x, y, sample_weight, rho=RHO
    )
    weights = [v.value for v in model.trainable_variables]
    expected = one_example_sam(hand_logits, weights, x[:1], y[:1], 1.0, "sam")
    assert_all_close(result.grads, [g / 2 for g in expected])


def regularised():
    model = mlp()
    model.layers[0].kernel.regularizer = keras.regularizers.L2(0.01)
    return model


def shared_dense():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4)
    return compiled(keras.Model(inputs, dense(dense(inputs))))


def with_layer(layer, shape=(4,)):
    inputs = keras.Input(shape)
    return compiled(keras.Model(inputs, keras.layers.Dense(3)(layer(inputs))))


def with_attention(shape=(5, 4), **kwargs):
    inputs = keras.Input(shape)
    h = keras.layers.MultiHeadAttention(2, 3, **kwargs)(inputs, inputs)
    h = keras.layers.Flatten()(h)
    return compiled(keras.Model(inputs, keras.layers.Dense(3)(h)))


def summed_loss():
    model = mlp()
    model.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError(
        reduction="sum"
    ))
    return model


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize(
    "build, options, expected",
    [
        (mlp, {}, True),
        (mlp, {"gradient_rule": "logit"}, True),
        (mixer, {"sam_every": 2}, True),
        (lambda: with_layer(keras.layers.Dropout(0.0)), {}, True),
        (mlp, {"m": None}, False),
        (mlp, {"m": 2}, False),
        (mlp, {"p": float("inf")}, False),
        (mlp, {"adaptive": True}, False),
        (mlp, {"perturbation": "random"}, False),
        (mlp, {"ascent_steps": 2}, False),
        (mlp, {"second_order": True}, False),
        (mlp, {"perturbed_fraction": 0.5}, False),
        (regularised, {}, False),
        (shared_dense, {}, False),
        (summed_loss, {}, False),
        (lambda: with_layer(keras.layers.Dropout(0.5)), {}, False),
        (lambda: with_layer(keras.layers.BatchNormalization()), {}, False),
        (lambda: with_layer(keras.layers.Conv1D(2, 2), (4, 2)), {}, False),
        (lambda: with_layer(keras.layers.Lambda(lambda t: t)), {}, False),
        (lambda: compiled(Subclassed()), {}, False),
        (transformer, {}, True),
        (functools.partial(transformer, causal=True),
         {"gradient_rule": "jacobian"}, True),
        (cross_attention, {}, True),
        (lambda: cross_attention(return_attention_scores=False), {}, True),
        (lambda: cross_attention(attention_mask=tf.ones((1, 5, 3))), {},
         False),
        (lambda: with_attention(dropout=0.1), {}, False),
        (lambda: with_attention(use_gate=True), {}, False),
        (lambda: with_attention((2, 5, 4)), {}, False),
        (lambda: with_layer(keras.layers.EinsumDense("ab,bc->ac", 3)), {},
         True),
        (lambda: with_layer(keras.layers.EinsumDense("ab,cb->ac", 3)), {},
         False),  # the kernel's contracted axis is not its first
        (lambda: with_layer(keras.layers.EinsumDense(  # bias over part
            "abc,cde->abde", (None, 2, 3), bias_axes="e"), (2, 4)), {}, False),
    ],
)
def test_supported(build, options, expected):
    options = {"m": 1, **options}
    assert per_example.supported(build(), SAMOptions(**options)) is expected


def test_transformer_1_sam_under_mirrored_strategy():
    """Two replicas of 1-SAM on a Transformer: the optimizer applies the
    mean over the global batch of every example's own SAM gradient."""
    keras.utils.set_random_seed(3)
    reference = transformer()
    x, y, _ = data(reference, n=4)
    weights = [v.numpy() for v in reference.weights]
    with mirrored(2).scope():
        model = keras_sam.SAMModel.from_model(
            benchmark_tool().transformer_classifier(
                classes=3, width=8, heads=2, blocks=1
            ),
            rho=RHO, m=1,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    model.set_weights(weights)
    assert per_example.supported(model, model.sam_options)
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    expected = per_example.per_example_sam_gradients(
        reference, x, y, rho=RHO
    ).grads
    for variable, start, grad in zip(
        model.trainable_variables, weights, expected
    ):
        np.testing.assert_allclose(
            variable.numpy(), start - 0.5 * grad.numpy(), **TOLERANCE
        )


@pytest.mark.parametrize("build", [mlp, transformer])
def test_rho_zero_is_the_plain_gradient(build):
    """At rho = 0 every eps_i is 0: the mean of per-example gradients at w,
    i.e. the batch gradient (SGD's)."""
    model = build()
    x, y, sample_weight = data(model)
    result = per_example.per_example_sam_gradients(
        model, x, y, sample_weight, rho=0.0
    )
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x, y, y_pred, sample_weight, training=True)
    expected = tape.gradient(loss, model.trainable_variables)
    assert_all_close(result.grads, expected)
