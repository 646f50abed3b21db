"""On PyTorch a SAM step leaves none of its weight-sized tensors to
Python's cyclic garbage collector.

Keras 3.15's torch `keras.tree.flatten` and `pack_sequence_as` hold the
structure they were given in a reference cycle (keras-team/keras#23110),
so the perturbed weights of every step stayed allocated until the cyclic
collector ran: on a GPU about one copy of the weights per step piled up
between collections (`tools/README.md`). Runs on the torch backend only
(`make test` runs tests/backend/torch under `KERAS_BACKEND=torch`).
"""

import gc

import keras
import numpy as np
import pytest

if keras.backend.backend() != "torch":
    pytest.skip("the torch backend's step", allow_module_level=True)

import torch  # noqa: E402

import keras_sam  # noqa: E402


def _garbage_after_one_step(model, x, y):
    """The tensors one step leaves in reference cycles."""
    model.train_on_batch(x, y)  # builds and warms up
    gc.collect()
    gc.disable()
    try:
        model.train_on_batch(x, y)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("m", [None, 4])
def test_a_step_leaves_no_weights_to_the_cycle_collector(m):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((7,))
    hidden = keras.layers.Dense(5, activation="tanh")(inputs)
    model = keras_sam.SAMModel(
        inputs, keras.layers.Dense(3)(hidden), rho=0.05, m=m)
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 7)).astype("float32")
    y = np.zeros((8, 3), "float32")

    garbage = _garbage_after_one_step(model, x, y)

    kernels = {tuple(v.shape) for v in model.trainable_variables
               if len(v.shape) == 2}
    assert kernels == {(7, 5), (5, 3)}
    held = [tuple(t.shape) for t in garbage if tuple(t.shape) in kernels]
    assert held == [], held
