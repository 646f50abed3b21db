"""TPU readiness that can be checked on a CPU: every variant's replica step
compiles with XLA and its graph holds no op a TPU cannot run."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from tests import reference

# Ops that run on the host (Python callbacks, printing, strings) or draw
# from a stateful random generator (not reproducible across replicas, and
# not compilable for TPU): none may appear in a SAM step.
HOST_OPS = {
    "PyFunc",
    "PyFuncStateless",
    "EagerPyFunc",
    "Print",
    "PrintV2",
    "StringFormat",
    "StringJoin",
    "AsString",
    "RandomUniform",
    "RandomUniformInt",
    "RandomStandardNormal",
    "TruncatedNormal",
    "RandomShuffle",
    "Multinomial",
}

VARIANTS = {
    "sam": {},
    "m2": {"m": 2},
    "one_sam": {"m": 1},
    "p_inf": {"p": float("inf")},
    "asam": {"adaptive": True, "rho": 0.5},
    "two_ascent_steps": {"ascent_steps": 2},
    "second_order": {"second_order": True},
    "random": {"perturbation": "random"},
    "fisher_mask": {"perturbed_fraction": 0.5},
    "random_mask": {"perturbed_fraction": 0.5, "mask": "random"},
    "l_sam": {"m": 1, "gradient_rule": "logit"},
    "j_sam": {"m": 1, "gradient_rule": "jacobian"},
    "sam_every_2": {"sam_every": 2},
}


def build(options):
    hidden, logits = reference.tiny_layers()
    inputs = keras.Input((reference.INPUT_DIM,))
    x = keras.layers.Dropout(0.2)(hidden(inputs))
    model = keras_sam.SAMModel(inputs, logits(x), **options)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=True,
    )
    return model


def op_types(concrete_function) -> set:
    graph_def = concrete_function.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_replica_step_has_no_host_ops_and_compiles_with_xla(name):
    options = dict(VARIANTS[name])
    model = build(options)
    x, y = reference.tiny_data(n=8)
    model.build((None, reference.INPUT_DIM))
    model.optimizer.build(model.trainable_variables)
    step = tf.function(model.train_step, jit_compile=True)
    spec = (
        tf.TensorSpec((8, reference.INPUT_DIM), tf.float32),
        tf.TensorSpec((8,), tf.int32),
    )
    found = op_types(step.get_concrete_function(spec)) & HOST_OPS
    assert not found, f"{name}: host or stateful random ops {sorted(found)}"
    before = [w.copy() for w in model.get_weights()]
    logs = step((tf.constant(x), tf.constant(y)))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert any(
        not np.allclose(a, b) for a, b in zip(before, model.get_weights())
    )
