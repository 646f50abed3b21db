"""`jit_compile=True` on TensorFlow: XLA compiles SAM's gradient pass, once,
rather than the whole step with both passes, wherever every pass of the step
is that pass; elsewhere (second order, m-groups, L-SAM/J-SAM) the whole
step, as Keras does. Either way the numbers are those without XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from keras_sam.backend.tensorflow import step as tf_step
from tests.helpers import max_difference
from tests.helpers import weights_of

PASSES = {  # every pass is the traced gradient pass: XLA compiles it alone
    "sam": {},
    "sam_every_2": {"sam_every": 2},
    "adaptive_trigger": {"trigger": "adaptive"},
    "looksam": {"sam_every": 2, "off_step": "looksam"},
    "random": {"perturbation": "random"},
    "asam_fisher_mask": {"adaptive": True, "perturbed_fraction": 0.5},
    "two_ascent_steps": {"ascent_steps": 2},
}
WHOLE_STEP = {  # passes XLA cannot take apart: the whole step is compiled
    "second_order": {"second_order": True},
    "m2": {"m": 2},
    "logit": {"gradient_rule": "logit"},
}
OPTIONS = {**PASSES, **WHOLE_STEP}


def build(options, jit_compile, model_class=keras_sam.SAMModel):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    # No dropout: TensorFlow's stateless draws pick another algorithm
    # under XLA (as for keras.Model), so the masks would differ.
    h = keras.layers.Flatten()(h)
    if model_class is keras_sam.SAMModel:
        options = {"rho": 0.2, **options}
    model = model_class(inputs, keras.layers.Dense(3)(h), **options)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 6, 6, 2)).astype("float32"), np.arange(16) % 3


def gradient_pass_calls(model) -> dict:
    """{function name: calls} of the gradient passes in one trace of the
    step (conditional branches included), and whether each is marked for
    XLA."""
    traced = tf.function(model.train_step, autograph=False)
    graph = traced.get_concrete_function(
        (tf.TensorSpec((8, 6, 6, 2)), tf.TensorSpec((8,), tf.int64))
    ).graph.as_graph_def()
    library = {f.signature.name: f for f in graph.library.function}
    calls = {}

    def visit(nodes):
        for node in nodes:
            for attr in node.attr.values():
                names = [attr.func.name] + [f.name for f in attr.list.func]
                for name in filter(None, names):
                    if "gradient_pass" in name:
                        marked = library[name].attr["_XlaMustCompile"].b
                        count = calls.get(name, (0, marked))[0]
                        calls[name] = (count + 1, marked)
                    elif name in library:
                        visit(library[name].node_def)

    visit(graph.node)
    return calls


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_xla_gives_the_steps_of_the_graph(name):
    options = OPTIONS[name]
    x, y = data()
    runs = {}
    for jit_compile in (False, True):
        model = build(options, jit_compile)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        runs[jit_compile] = weights_of(model)
        assert model.jit_compile is jit_compile  # lent to Keras, given back
    assert max_difference(runs[False], runs[True]) < 1e-5
    model = build(options, True)
    assert tf_step.compiles_passes(model) is (name in PASSES)


def test_rho_zero_under_xla_trains_as_keras_model_under_xla():
    x, y = data()
    twins = [build({"rho": 0.0}, True), build({}, True, keras.Model)]
    histories = [
        m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
        for m in twins
    ]
    assert max_difference(*map(weights_of, twins)) < 1e-6
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(histories[0][key], histories[1][key],
                                   rtol=1e-6)
    evaluated = [m.evaluate(x, y, verbose=0, return_dict=True)
                 for m in twins]
    np.testing.assert_allclose(evaluated[0]["loss"], evaluated[1]["loss"],
                               rtol=1e-6)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_the_gradient_pass_is_traced_once_and_compiled_alone(jit_compile):
    model = build({}, jit_compile)
    model.fit(*data(), batch_size=8, epochs=1, verbose=0)
    calls = gradient_pass_calls(model)
    # One function (one trace, one XLA compilation) for the SAM branch's
    # two passes and the base branch's one.
    assert list(calls.values()) == [(3, jit_compile)], calls


def test_the_whole_step_is_compiled_where_the_passes_differ():
    model = build({"second_order": True}, True)
    model.fit(*data(), batch_size=8, epochs=1, verbose=0)
    assert gradient_pass_calls(model) == {}  # Keras compiles the step
