"""Gradients on whichever backend Keras runs, for the float64 oracle.

`tests/oracle.py` differentiates a Keras model's own forward pass; this
module is the one place that knows how each backend differentiates (and
it does not import keras_sam). Example:

>>> import keras
>>> x = keras.ops.convert_to_tensor([1.0, 2.0])
>>> [g] = grad(lambda ts: keras.ops.sum(ts[0] ** 2), [x])
>>> keras.ops.convert_to_numpy(g).tolist()
[2.0, 4.0]
"""

import contextlib

import keras

BACKEND = keras.backend.backend()


def float64():
    """A block inside which float64 stays float64.

    JAX truncates float64 to float32 unless `jax_enable_x64` is on, so the
    oracle builds and runs its float64 model inside this block; the model
    under test runs outside it, as users run it. Nothing to do elsewhere.
    """
    if BACKEND == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def grad(fn, tensors) -> list:
    """The gradient of the scalar `fn(tensors)` in each of `tensors`.

    Dense (TensorFlow's row-sparse `tf.IndexedSlices` made dense, which
    sums the rows of repeated indices), zeros where `fn` does not depend
    on a tensor. Calls nest: a `grad` inside the `fn` of another is
    differentiated by the outer one (a second-order gradient).
    """
    tensors = list(tensors)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(tensors)
        grads = tape.gradient(
            value, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return [tf.convert_to_tensor(g) for g in grads]
    if BACKEND == "jax":
        import jax

        return list(jax.grad(lambda ts: fn(list(ts)))(tensors))
    if BACKEND == "torch":
        import torch
        import torch.nn.attention

        # Inside an outer `grad`, the tensors already carry its graph:
        # differentiate through them and keep the graph for the outer one.
        nested = torch.is_grad_enabled() and any(
            t.requires_grad for t in tensors
        )
        if not nested:
            tensors = [t.detach().requires_grad_() for t in tensors]
        # The math kernel of attention: the fused ones have no double
        # backward (pytorch/pytorch#116350).
        math_attention = torch.nn.attention.sdpa_kernel(
            torch.nn.attention.SDPBackend.MATH)
        with torch.enable_grad(), math_attention:
            value = fn(tensors)
            grads = torch.autograd.grad(
                value, tensors, create_graph=nested, allow_unused=True
            )
        return [
            torch.zeros_like(t) if g is None else g
            for g, t in zip(grads, tensors)
        ]
    raise NotImplementedError(f"no gradient for the {BACKEND} backend")
