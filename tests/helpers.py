"""Helpers shared by test modules: the reference network and weight checks.

Test modules import these instead of importing from each other; the
network is `tests/reference.py`'s, the independent hand-written SAM.
"""

import keras
import numpy as np

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


@keras.saving.register_keras_serializable(package="keras_sam_tests")
class TinyNet(keras_sam.SAMModel):
    """The reference network written as a SAMModel subclass."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.logits = reference.tiny_layers()

    def call(self, inputs):
        return self.logits(self.hidden(inputs))


class Subclassed(keras_sam.SAMModel):
    """A lazily built SAMModel subclass: one Dense layer of 2 units."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(LEARNING_RATE),
    "adam": lambda: keras.optimizers.Adam(LEARNING_RATE),
}


def build(form="functional", optimizer="sgd", jit_compile=False,
          float32_outputs=False, **sam_kwargs):
    """The reference network as a compiled SAMModel, with fixed weights.

    `form`: "functional", "subclass" (`TinyNet`) or "wrapped"
    (`SAMModel.from_model` of a Sequential). `optimizer`: "sgd" or "adam"
    (learning rate `LEARNING_RATE`) or an optimizer instance.
    `float32_outputs`: a float32 linear activation after the logits (the
    output layer mixed precision wants). Compiled with the accuracy metric.
    """
    if form == "functional":
        hidden, logits = reference.tiny_layers()
        inputs = keras.Input((reference.INPUT_DIM,))
        outputs = logits(hidden(inputs))
        if float32_outputs:
            outputs = keras.layers.Activation("linear", dtype="float32")(
                outputs
            )
        model = keras_sam.SAMModel(inputs, outputs, **sam_kwargs)
    elif float32_outputs:
        raise ValueError(f"float32_outputs needs form='functional', not {form}")
    elif form == "subclass":
        model = TinyNet(**sam_kwargs)
        model(np.zeros((1, reference.INPUT_DIM), "float32"))
    elif form == "wrapped":
        base = keras.Sequential(
            [keras.Input((reference.INPUT_DIM,)), *reference.tiny_layers()]
        )
        model = keras_sam.SAMModel.from_model(base, **sam_kwargs)
    else:
        raise ValueError(form)
    for variable, value in zip(model.trainable_variables, initial_weights()):
        variable.assign(value)
    if isinstance(optimizer, str):
        optimizer = OPTIMIZERS[optimizer]()
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
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
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(replicas)],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
