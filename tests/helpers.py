"""Helpers shared by test modules: the reference network and weight checks.

Test modules import these instead of importing from each other; the
network is `tests/reference.py`'s, the independent hand-written SAM.
"""

import keras
import numpy as np
import tensorflow as tf

import keras_sam
from tests import reference

RHO = 0.3
LEARNING_RATE = 0.1


def initial_weights(seed=0):
    """Fixed weights of the reference network (kernel1, bias1, ...)."""
    rng = np.random.default_rng(seed)
    shapes = [
        (reference.INPUT_DIM, reference.HIDDEN),
        (reference.HIDDEN,),
        (reference.HIDDEN, reference.CLASSES),
        (reference.CLASSES,),
    ]
    return [rng.normal(scale=0.5, size=s).astype("float32") for s in shapes]


def build(optimizer=None, **sam_kwargs):
    """The reference network as a compiled functional SAMModel."""
    hidden, logits = reference.tiny_layers()
    inputs = keras.Input((reference.INPUT_DIM,))
    model = keras_sam.SAMModel(inputs, logits(hidden(inputs)), **sam_kwargs)
    for variable, value in zip(model.trainable_variables, initial_weights()):
        variable.assign(value)
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def weights_of(model):
    """The model's trainable weights as NumPy arrays."""
    return [v.numpy() for v in model.trainable_variables]


def assert_weights_close(actual, expected, atol=1e-6):
    """Asserts two lists of weights are equal within `atol` (rtol 1e-5)."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, np.asarray(e), atol=atol, rtol=1e-5)


def max_difference(a, b):
    """The largest absolute difference between two lists of weights."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(a, b))


def mirrored(replicas=2):
    """A MirroredStrategy over the first `replicas` logical CPUs, without
    collective ops.

    Collective ops in one process share instance keys across strategies, so
    one collective aborted by an earlier test (a refused setting, a group
    size that changed) fails every later collective in that process;
    `ReductionToOneDevice` all-reduces without them, with the same result.
    Tests that need collectives on purpose build their own strategy.
    """
    return tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(replicas)],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
