"""Reliability of SAMModel where other SAM implementations break.

Gradient accumulation, gradient clipping, `.keras` and SavedModel round
trips, non-finite losses and bad constructor arguments, each checked
against an independent hand computation (`tests/reference.py`) or against
Keras' documented behaviour. Mixed precision, crash/resume and the
property-based tests live in their own files.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from tests import reference
from tests.helpers import LEARNING_RATE
from tests.helpers import RHO
from tests.helpers import Subclassed
from tests.helpers import assert_weights_close
from tests.helpers import build
from tests.helpers import initial_weights
from tests.helpers import max_difference
from tests.helpers import weights_of

MOMENTUM = 0.9


# --------------------------------------------------- gradient accumulation


def momentum_update(weights, velocity, grads):
    """Keras SGD with momentum: v = mu v - lr g; w = w + v."""
    velocity = [MOMENTUM * v - LEARNING_RATE * g
                for v, g in zip(velocity, grads)]
    return [w + v for w, v in zip(weights, velocity)], velocity


@pytest.mark.parametrize("group_size", [None, 2])
def test_gradient_accumulation_applies_the_mean_sam_gradient(group_size):
    # 16 examples, micro-batches of 4, k = 2: two optimizer updates, each
    # with the mean of two micro-batch SAM gradients taken at the same w.
    x, y = reference.tiny_data(n=16)
    micro, k = 4, 2
    optimizer = keras.optimizers.SGD(
        LEARNING_RATE, momentum=MOMENTUM, gradient_accumulation_steps=k
    )
    model = build(optimizer=optimizer, rho=RHO, m=group_size)
    model.fit(x, y, batch_size=micro, shuffle=False, verbose=0)

    weights = initial_weights()
    velocity = [np.zeros_like(w) for w in weights]
    for start in range(0, len(y), micro * k):
        window = slice(start, start + micro * k)
        # Each micro-batch (or each group of m inside it) perturbs with its
        # own gradient: accumulation is m-sharpness with m = micro-batch.
        g = reference.grouped_sam_gradient(
            weights, x[window], y[window], RHO, group_size or micro
        )
        weights, velocity = momentum_update(weights, velocity, g)
    assert_weights_close(weights_of(model), weights)
    assert int(model.optimizer.iterations.numpy()) == len(y) // (micro * k)

    # Not the SAM gradient of the whole accumulated batch of 8.
    weights, velocity = initial_weights(), [0.0] * 4
    for start in range(0, len(y), micro * k):
        window = slice(start, start + micro * k)
        g = reference.sam_gradient(weights, x[window], y[window], RHO)
        weights, velocity = momentum_update(weights, velocity, g)
    assert max_difference(weights_of(model), weights) > 1e-4


def test_accumulation_equals_m_sharpness_with_m_the_micro_batch():
    x, y = reference.tiny_data(n=8)
    accumulated = build(
        optimizer=keras.optimizers.SGD(
            LEARNING_RATE, gradient_accumulation_steps=2
        ),
        rho=RHO,
    )
    accumulated.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    grouped = build(rho=RHO, m=4)
    grouped.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert_weights_close(weights_of(accumulated), weights_of(grouped))


# ------------------------------------------------------- gradient clipping


def clip(grads, kind, threshold):
    """Keras' three clipping rules, written out."""
    grads = [np.asarray(g, np.float64) for g in grads]
    if kind == "clipvalue":
        return [np.clip(g, -threshold, threshold) for g in grads]
    if kind == "clipnorm":
        return [g * threshold / max(np.linalg.norm(g), threshold)
                for g in grads]
    norm = math.sqrt(sum(np.sum(g**2) for g in grads))
    return [g * threshold / max(norm, threshold) for g in grads]


def sam_gradient_with_clipped_ascent(weights, x, y, kind, threshold):
    """What an implementation that clips the ascent direction would do."""
    g = clip(reference.gradient(weights, x, y), kind, threshold)
    norm = math.sqrt(sum(np.sum(t**2) for t in g))
    perturbed = [w + RHO * t / norm for w, t in zip(weights, g)]
    return reference.gradient(
        [tf.constant(w, tf.float32) for w in perturbed], x, y
    )


@pytest.mark.parametrize(
    "kind, threshold",
    [("clipvalue", 0.02), ("clipnorm", 0.05), ("global_clipnorm", 0.1)],
)
def test_clipping_applies_to_the_final_sam_gradient_only(kind, threshold):
    x, y = reference.tiny_data()
    optimizer = keras.optimizers.SGD(LEARNING_RATE, **{kind: threshold})
    model = build(optimizer=optimizer, rho=RHO)
    model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)

    w0 = initial_weights()
    g_sam = reference.sam_gradient(w0, x, y, RHO)
    expected = reference.sgd_update(w0, clip(g_sam, kind, threshold),
                                    LEARNING_RATE)
    assert_weights_close(weights_of(model), expected)
    # The threshold matters: unclipped SAM lands elsewhere.
    unclipped = reference.sgd_update(w0, g_sam, LEARNING_RATE)
    assert max_difference(expected, unclipped) > 1e-3
    if kind != "global_clipnorm":  # a global rescale keeps eps unchanged
        wrong = sam_gradient_with_clipped_ascent(w0, x, y, kind, threshold)
        wrong = reference.sgd_update(w0, clip(wrong, kind, threshold),
                                     LEARNING_RATE)
        assert max_difference(expected, wrong) > 1e-5


# ---------------------------------------------------------------- saving


SETTINGS = [
    {"rho": 0.0},
    {"rho": 0.2, "m": 2, "p": float("inf")},
    {"rho": 0.05, "m": 4, "p": 3.0},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["rho0", "m2-inf", "m4-p3"])
def test_keras_file_in_safe_mode_resumes_training_exactly(settings, tmp_path):
    x, y = reference.tiny_data(n=16)
    optimizer = keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM)
    model = build(optimizer=optimizer, **settings)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    model.rho.assign(0.123)  # as a RhoScheduler would have
    path = str(tmp_path / "model.keras")
    model.save(path)

    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, keras_sam.SAMModel)
    assert loaded.m == settings.get("m")
    assert loaded.p == settings.get("p", 2.0)
    np.testing.assert_allclose(float(loaded.rho.numpy()), 0.123, rtol=1e-7)
    assert int(loaded.optimizer.iterations.numpy()) == 2
    assert_weights_close(
        [v.numpy() for v in loaded.optimizer.variables],
        [v.numpy() for v in model.optimizer.variables],
        atol=0,
    )
    # The next epoch is the same step for both: momentum, rho and settings
    # all came back.
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert_weights_close(weights_of(loaded), weights_of(model), atol=1e-7)


def count_op_types(function_def_library, graph):
    """Op types in a concrete function's graph and every nested function."""
    counts = {}
    nodes = list(graph.as_graph_def().node)
    for function in function_def_library:
        nodes.extend(function.node_def)
    for node in nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def test_export_is_a_plain_inference_artefact(tmp_path):
    x, _ = reference.tiny_data(n=8)
    y = np.arange(8) % reference.CLASSES
    inputs = keras.Input((reference.INPUT_DIM,))
    hidden = keras.layers.Dense(6, activation="tanh")(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.Dropout(0.5)(hidden)
    outputs = keras.layers.Dense(reference.CLASSES)(hidden)
    model = keras_sam.SAMModel(inputs, outputs, rho=0.2, m=4)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    export_dir = str(tmp_path / "served")
    model.export(export_dir, verbose=False)

    artefact = tf.saved_model.load(export_dir)
    assert set(artefact.signatures) == {"serve", "serving_default"}
    np.testing.assert_allclose(
        artefact.serve(tf.constant(x)).numpy(),
        model.predict(x, verbose=0),
        atol=1e-6,
    )
    # No optimizer state travels with it ...
    names = {v.name.split(":")[0] for v in artefact.variables}
    assert not any("sgd" in n or "momentum" in n for n in names)
    assert len(artefact.variables) == len(model.variables)
    # ... and serving runs one forward pass: two MatMuls, no gradients.
    signature = artefact.signatures["serving_default"]
    ops = count_op_types(signature.graph.as_graph_def().library.function,
                         signature.graph)
    assert ops.get("MatMul", 0) == 2
    assert not [op for op in ops if "Grad" in op or op == "pfor"]
    reloaded = keras.layers.TFSMLayer(export_dir, call_endpoint="serve")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(x)),
        model.predict(x, verbose=0),
        atol=1e-6,
    )


# ------------------------------------------------------ non-finite losses


class BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def test_terminate_on_nan_stops_training_without_an_exception():
    x, y = reference.tiny_data(n=32)
    x[17, 2] = np.nan  # in the third batch of 8
    model = build(rho=RHO)
    counter = BatchCounter()
    history = model.fit(
        x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN(), counter],
    )
    assert model.stop_training
    assert counter.batches == 3  # stopped after the NaN batch, epoch 1
    assert len(history.history["loss"]) == 1
    assert math.isnan(history.history["loss"][0])
    # As with a plain Keras model in float32, the NaN batch's update has
    # been applied: roll back with BackupAndRestore or ModelCheckpoint.
    # (Under mixed_float16 the LossScaleOptimizer skips it instead.)
    assert not all(np.isfinite(w).all() for w in weights_of(model))


# ------------------------------------------------------------- bad input


def functional(**kwargs):
    inputs = keras.Input((reference.INPUT_DIM,))
    outputs = keras.layers.Dense(reference.CLASSES)(inputs)
    return keras_sam.SAMModel(inputs, outputs, **kwargs)


def wrapped(**kwargs):
    base = keras.Sequential(
        [keras.Input((reference.INPUT_DIM,)), keras.layers.Dense(2)]
    )
    return keras_sam.SAMModel.from_model(base, **kwargs)


# (argument, bad value, words of the fix that the message must contain)
BAD_ARGUMENTS = [
    ("rho", -0.1, ">= 0"),
    ("rho", float("nan"), ">= 0"),
    ("rho", float("inf"), "finite"),
    ("rho", "big", "number"),
    ("rho", None, "number"),
    ("rho", [0.1, 0.2], "number"),
    ("m", 0, "positive integer"),
    ("m", -3, "positive integer"),
    ("m", 2.5, "positive integer"),
    ("m", "2", "positive integer"),
    ("m", True, "positive integer"),
    ("p", 1, "> 1"),
    ("p", 0.5, "> 1"),
    ("p", float("nan"), "> 1"),
    ("p", "l2", "> 1"),
    ("p", None, "> 1"),
    ("perturbation", "rand", "'gradient', 'random'"),
    ("perturbation", None, "'gradient', 'random'"),
    ("eta", -0.1, ">= 0"),
    ("eta", float("nan"), ">= 0"),
    ("eta", "x", ">= 0"),
    ("ascent_steps", 0, ">= 1"),
    ("ascent_steps", 2.0, "integer"),
    ("gradient_rule", "lsam", "'sam', 'logit', 'jacobian'"),
    ("perturbed_fraction", 0, "(0, 1]"),
    ("perturbed_fraction", 1.5, "(0, 1]"),
    ("perturbed_fraction", float("nan"), "(0, 1]"),
    ("mask", "top", "'fisher', 'random'"),
    ("mask_update_every", 0, ">= 1"),
    ("sam_every", 0, ">= 1"),
    ("sam_every", 1.5, "integer"),
]


def received(name, value):
    """The 'name=value' part a message must show for the value received."""
    return f"{name}={value!r}"


@pytest.mark.parametrize("form", [functional, wrapped, Subclassed])
@pytest.mark.parametrize("name, value, fix", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_at_construction(form, name, value, fix):
    with pytest.raises(ValueError) as error:
        form(**{name: value})
    message = str(error.value)
    assert f"`{name}`" in message
    assert received(name, value) in message
    assert fix in message


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"ascent_steps": 3, "p": 3.0}, ["ascent_steps=3", "p=2", "p=3.0"]),
        ({"second_order": True, "ascent_steps": 2},
         ["second_order=True", "ascent_steps=2", "choose one"]),
        ({"perturbation": "random", "gradient_rule": "logit"},
         ["perturbation='random'", "gradient_rule='logit'"]),
    ],
)
def test_incompatible_arguments_are_named_together(kwargs, words):
    with pytest.raises(ValueError) as error:
        functional(**kwargs)
    for word in words:
        assert word in str(error.value)


def unvalidated(name, value, reason):
    """A bad value that once was accepted; `reason` says what it did."""
    del reason
    return pytest.param(name, value, id=f"{name}={value!r}")


@pytest.mark.parametrize(
    "name, value",
    [
        unvalidated("rho", True, "check_rho accepts a bool (rho=True trains "
                    "with rho=1.0) while check_m refuses m=True"),
        unvalidated("eta", True, "the eta check accepts a bool (eta=1)"),
        unvalidated("adaptive", "yes", "adaptive is not validated: any "
                    "truthy value turns ASAM on"),
        unvalidated("second_order", "no", "second_order is not validated: "
                    "second_order='no' turns second-order SAM ON"),
        unvalidated("seed", "a", "seed is not validated: fit fails later "
                    "with a TensorFlow 'Pack' type error"),
        unvalidated("seed", None, "seed is not validated: fit fails later "
                    "with 'None values not supported'"),
        unvalidated("seed", 1.5, "seed is not validated"),
    ],
)
def test_arguments_once_accepted_are_refused(name, value):
    with pytest.raises(ValueError, match=received(name, value)):
        functional(**{name: value})


def test_numpy_scalars_are_accepted():
    model = functional(m=np.int64(4), eta=np.float32(0.1))
    assert model.m == 4


@pytest.mark.parametrize("form", [functional, wrapped])
def test_misspelt_sam_argument_is_refused(form):
    with pytest.raises(ValueError, match="rh0"):
        form(rh0=0.1)


def test_misspelt_argument_is_refused_by_subclasses():
    with pytest.raises(ValueError, match="rh0"):
        Subclassed(rh0=0.1)
