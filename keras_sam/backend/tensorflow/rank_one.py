"""The per-example algebra of Dense, attention and LayerNormalization layers.

For a Dense layer z = a W + b the gradient of example i is rank one per
position, dW_i = A_i^T Delta_i, so the pass at w + eps_i needs no weight
copy: its output is A'_i W + b + c_i ((A'_i A_i^T) Delta_i + db_i), and the
per-example squared norms come from the same factors. An EinsumDense layer
that contracts its input's trailing axes is a Dense layer on reshaped
tensors; MultiHeadAttention is four of them around a weightless attention
product. LayerNormalization is the same with the normalised input in place
of A. `Forward` runs a model's layers with these hooks;
`keras_sam.core.per_example` uses it for 1-SAM.

References:
    Goodfellow, "Efficient Per-Example Gradient Computations",
    arXiv:1510.01799, 2015.
"""

import functools
import math

import keras
import tensorflow as tf

from keras_sam import _keras

_L = keras.layers


def run(model, x, forward):
    """`model(x)` with `forward` running each operation."""
    if type(model).call is keras.Sequential.call:
        for layer in model.layers:
            x = forward(layer)(x)
        return x
    return _keras.run_graph(model, x, forward)


class Forward:
    """Runs a model's operations, Dense and LayerNormalization by hand.

    On the pass at w (no `factors`) it records, for every layer with
    trainable weights, what its per-example gradients are made of (`taps`:
    the layer, its input or normalised input, and its output, which it
    asks the tape to `watch`). On the pass at w + eps_i it adds to each such
    layer's output the closed form of example i's perturbation, `scale[i]`
    times its per-example gradient (`factors`).
    """

    def __init__(self, model, weights, factors=None, scale=None):
        self.weights = weights
        variables = model.trainable_variables
        self.values = {id(v): w for v, w in zip(variables, weights)}
        self.factors = factors
        self.scale = scale
        self.taps = []
        self.watch = lambda tensor: None

    def __call__(self, op):
        if type(op) is _L.Dense:
            return functools.partial(self._dense, op)
        if type(op) is _L.EinsumDense:
            return functools.partial(self._einsum_dense, op)
        if type(op) is _L.MultiHeadAttention:
            return functools.partial(self._attention, op)
        if type(op) is _L.LayerNormalization:
            return functools.partial(self._norm, op)
        return op

    def _value(self, variable):
        return self.values.get(id(variable), variable.value)

    def _dense(self, layer, inputs, **unused_kwargs):
        kernel, bias = self._value(layer.kernel), None
        if layer.bias is not None:
            bias = self._value(layer.bias)
        return layer.activation(self._linear(layer, inputs, kernel, bias))

    def _einsum_dense(self, layer, inputs, **unused_kwargs):
        """A dense-form EinsumDense layer as a Dense one (`dense_form`)."""
        contracted, units = dense_form(layer)
        fan_in = math.prod(inputs.shape[-contracted:])
        leading = tf.shape(inputs)[:-contracted]
        x = tf.reshape(inputs, tf.concat([leading, [fan_in]], 0))
        kernel = tf.reshape(self._value(layer.kernel), [fan_in, -1])
        bias = None
        if layer.bias is not None:
            bias = tf.reshape(self._value(layer.bias), [-1])
        z = self._linear(layer, x, kernel, bias)
        return layer.activation(tf.reshape(z, tf.concat([leading, units], 0)))

    def _linear(self, layer, inputs, kernel, bias):
        """`inputs @ kernel + bias`, recorded or perturbed as `layer`'s."""
        inputs = tf.cast(inputs, layer.compute_dtype)
        z = keras.ops.matmul(inputs, kernel)
        if bias is not None:
            z = z + bias
        return self._perturb(layer, inputs, z, _dense_shift)

    def _attention(
        self, layer, query, value, key=None, use_causal_mask=False,
        **unused_kwargs,
    ):
        """MultiHeadAttention as its `call` computes it without masks and
        dropout: projections, scaled dot-product attention, output."""
        key = value if key is None else key
        q = self._einsum_dense(layer.query_dense, query)
        k = self._einsum_dense(layer.key_dense, key)
        v = self._einsum_dense(layer.value_dense, value)
        attended = keras.ops.dot_product_attention(
            q, k, v, scale=1.0 / math.sqrt(float(layer.key_dim)),
            is_causal=bool(use_causal_mask),
        )
        return self._einsum_dense(layer.output_dense, attended)

    def _norm(self, layer, inputs, **unused_kwargs):
        inputs = tf.cast(inputs, layer.compute_dtype)
        xhat = keras.ops.layer_normalization(
            inputs, None, None, layer.axis, layer.epsilon
        )
        y = xhat
        if layer.gamma is not None:
            y = y * self._value(layer.gamma)
        if layer.beta is not None:
            y = y + self._value(layer.beta)
        return self._perturb(layer, xhat, y, _norm_shift)

    def _perturb(self, layer, inputs, output, shift):
        """`output`, recorded (at w) or perturbed (at w + eps_i)."""
        if self.factors is None:
            if any(id(v) in self.values for v in layer.trainable_variables):
                self.watch(output)
                self.taps.append((layer, inputs, output))
            return output
        factor = self.factors.get(id(layer))
        if factor is None:
            return output
        return output + shift(inputs, factor, self.scale, output)


def factors(forward, tap_grads, n):
    """Every tapped layer's per-example gradient factors, and ||g_i||.

    Args:
        forward: The `_Forward` of the pass at w.
        tap_grads: The gradients of the batch loss at the taps' outputs.
        n: The batch size (float32): example i's own loss has n times the
            batch loss's gradient at its outputs ("sum_over_batch_size").
    """
    factors, squares = {}, []
    for (layer, inputs, _), grad in zip(forward.taps, tap_grads):
        if grad is None:
            continue  # the layer does not reach the loss
        inputs = tf.stop_gradient(_as_sequence(inputs))
        delta = tf.stop_gradient(_as_sequence(grad * tf.cast(n, grad.dtype)))
        if type(layer) is _L.LayerNormalization:
            factor, square = _normfactors(forward, layer, inputs, delta)
        else:
            factor, square = _densefactors(forward, layer, inputs, delta)
        factors[id(layer)] = factor
        squares.append(tf.cast(square, tf.float32))
    if not squares:
        return factors, tf.zeros([tf.cast(n, tf.int32)])
    return factors, tf.sqrt(tf.add_n(squares))


def _densefactors(forward, layer, a, delta):
    """`(A_i, Delta_i, db_i)` and ||dW_i||^2 + ||db_i||^2 per example."""
    kernel = id(layer.kernel) in forward.values
    bias = layer.bias is not None and id(layer.bias) in forward.values
    square = 0.0
    if kernel and a.shape[1] == 1:
        square = tf.reduce_sum(tf.square(a), [1, 2]) * tf.reduce_sum(
            tf.square(delta), [1, 2]
        )
    elif kernel and _positions_first(a, delta):
        gram = tf.matmul(a, a, transpose_b=True)
        gram = gram * tf.matmul(delta, delta, transpose_b=True)
        square = tf.reduce_sum(gram, [1, 2])
    elif kernel:
        kernel_grad = tf.matmul(a, delta, transpose_a=True)
        square = tf.reduce_sum(tf.square(kernel_grad), [1, 2])
    bias_grad = tf.reduce_sum(delta, 1) if bias else None
    if bias:
        square += tf.reduce_sum(tf.square(bias_grad), 1)
    return ((a, delta) if kernel else None, bias_grad), square


def _dense_shift(inputs, factor, scale, output):
    """A'_i (c_i dW_i) + c_i db_i for every example i."""
    kernel, bias_grad = factor
    x = _as_sequence(inputs)
    shift = 0.0
    if kernel is not None:
        a, delta = kernel
        if x.shape[1] == 1:
            shift = tf.reduce_sum(x * a, -1, keepdims=True) * delta
        elif _positions_first(a, delta):
            shift = tf.matmul(tf.matmul(x, a, transpose_b=True), delta)
        else:
            shift = tf.matmul(x, tf.matmul(a, delta, transpose_a=True))
    if bias_grad is not None:
        shift = shift + bias_grad[:, None, :]
    c = tf.cast(scale, output.dtype)[:, None, None]
    return tf.reshape(c * shift, tf.shape(output))


def _positions_first(a, delta) -> bool:
    """Whether the T x T Gram form is cheaper than dW_i itself."""
    positions, fan_in, units = a.shape[1], a.shape[2], delta.shape[2]
    if positions is None:
        return True
    return positions * (fan_in + units) <= 2 * fan_in * units


def _normfactors(forward, layer, xhat, dy):
    """`(dgamma_i, dbeta_i)` and their squared norm per example."""
    gamma = layer.gamma is not None and id(layer.gamma) in forward.values
    beta = layer.beta is not None and id(layer.beta) in forward.values
    scale_grad = tf.reduce_sum(xhat * dy, 1) if gamma else None
    offset_grad = tf.reduce_sum(dy, 1) if beta else None
    square = 0.0
    for grad in (scale_grad, offset_grad):
        if grad is not None:
            square += tf.reduce_sum(tf.square(grad), 1)
    return (scale_grad, offset_grad), square


def dense_form(layer):
    """`(contracted, units)` if an EinsumDense layer is a Dense layer on
    reshaped tensors, else None.

    That is: its equation contracts the input's trailing `contracted` axes
    with the kernel's leading ones, the output is the input's other axes
    then the kernel's, and a bias (if any) spans every output axis of the
    kernel; `units` is the kernel's output shape. MultiHeadAttention's
    projections ("abc,cde->abde") and output ("abcd,cde->abe") are.
    """
    try:
        inputs, rest = layer.equation.replace(" ", "").split(",")
        kernel, output = rest.split("->")
    except ValueError:
        return None
    contracted = 0
    while contracted < len(kernel) and kernel[contracted] in inputs:
        contracted += 1
    free = kernel[contracted:]
    if (
        "." in inputs + kernel
        or len(set(inputs)) < len(inputs)
        or len(set(kernel)) < len(kernel)
        or contracted == 0
        or contracted >= len(inputs)
        or inputs[-contracted:] != kernel[:contracted]
        or set(free) & set(inputs)
        or output != inputs[:-contracted] + free
        or (layer.bias is not None and layer.bias_axes != free)
    ):
        return None
    return contracted, list(layer.kernel.shape[contracted:])


def _norm_shift(xhat, factor, scale, output):
    """xhat'_i (c_i dgamma_i) + c_i dbeta_i for every example i."""
    scale_grad, offset_grad = factor
    c = tf.cast(scale, output.dtype)[:, None]
    shape = [-1] + [1] * (output.shape.rank - 2) + [output.shape[-1]]
    shift = 0.0
    if scale_grad is not None:
        shift = xhat * tf.reshape(c * scale_grad, shape)
    if offset_grad is not None:
        shift = shift + tf.reshape(c * offset_grad, shape)
    return shift


def _as_sequence(t):
    """`t` as `[n, positions, features]` (one position for rank 2)."""
    if t.shape.rank == 2:
        return t[:, None, :]
    if t.shape.rank == 3:
        return t
    return tf.reshape(t, [tf.shape(t)[0], -1, t.shape[-1]])
