"""SAM's algorithm half (`keras_sam.core.step`) on one Keras backend.

Run as `KERAS_BACKEND=<name> python -m tests.core.backend_step`: takes one
descent gradient per variant of a small linear least-squares problem with
`step.descent`, each pass's gradient from the backend's own autodiff, and
prints them as JSON. `tests/core/test_backends.py` compares the backends with
each other and with a NumPy hand computation.
"""

import json
import sys

import keras
import numpy as np
from keras import ops

from keras_sam.core import step
from keras_sam.core.options import SAMOptions

RHO = 0.3
VARIANTS = {
    "sam": {},
    "p_inf": {"p": float("inf")},
    "asam": {"adaptive": True},
    "fisher_mask": {"perturbed_fraction": 0.5},
    "two_ascent_steps": {"ascent_steps": 2},
}


def problem():
    """Weights (kernel 3x2, bias 2) and a batch of 8, fixed by a seed."""
    rng = np.random.RandomState(0)
    weights = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    weights = [w.astype("float32") for w in weights]
    return weights, x.astype("float32"), y.astype("float32")


def loss_fn(weights, x, y):
    kernel, bias = weights
    return ops.mean(ops.square(ops.matmul(x, kernel) + bias - y))


def value_and_grad():
    """`(loss, grads)` at a list of weights, by the backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.value_and_grad(lambda w, x, y: loss_fn(w, x, y))
    if backend == "torch":
        import torch

        def torch_value_and_grad(weights, x, y):
            leaves = [w.detach().requires_grad_(True) for w in weights]
            loss = loss_fn(leaves, x, y)
            return loss.detach(), list(torch.autograd.grad(loss, leaves))

        return torch_value_and_grad
    import tensorflow as tf

    def tf_value_and_grad(weights, x, y):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = loss_fn(weights, x, y)
        return loss, tape.gradient(loss, weights)

    return tf_value_and_grad


def main():
    weights, x, y = problem()
    weights = [ops.convert_to_tensor(w) for w in weights]
    batch = (ops.convert_to_tensor(x), ops.convert_to_tensor(y), None)
    grad_fn = value_and_grad()

    def evaluate(w, batch, output_grads=False, need_grads=True):
        loss, grads = grad_fn(list(w), batch[0], batch[1])
        return step.Pass(loss, grads, None, {})

    results = {"backend": keras.backend.backend()}
    for name, kwargs in VARIANTS.items():
        options = SAMOptions(**kwargs)
        inputs = step.Inputs(normal=None, names=["kernel", "bias"])
        first = step.first_pass(evaluate, weights, batch, options)
        grads, loss = step.descent(
            evaluate, weights, batch, first, options,
            ops.convert_to_tensor(RHO), inputs,
        )
        results[name] = {
            "grads": [ops.convert_to_numpy(g).tolist() for g in grads],
            "loss_perturbed": float(ops.convert_to_numpy(loss)),
        }
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
