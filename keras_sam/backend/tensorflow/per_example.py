"""1-SAM (m = 1) for dense and attention models without weight copies.

1-SAM perturbs the weights of every example i by its own
eps_i = rho g_i / ||g_i||, g_i the gradient of example i's loss over all
trainable weights (Baek et al. eq. 2.6), and descends along the mean of the
gradients at w + eps_i. Mapping the SAM step over examples builds a copy of
the weights per example. For a Dense layer z = a W + b the per-example
gradient has a closed form, no copy needed (Goodfellow 2015):

    dW_i = A_i^T Delta_i,  db_i = sum_t Delta_{i,t},  Delta_i = dL_i/dz_i,

with A_i the layer's inputs of example i at its T positions (T = 1 for
rank-2 inputs). So the per-example squared norm is
sum((A_i A_i^T) * (Delta_i Delta_i^T)) + ||sum_t Delta_{i,t}||^2, and the
pass at w + eps_i is batched: the layer's output at its input A'_i is

    A'_i (W + c_i dW_i) + b + c_i db_i
        = A'_i W + b + c_i ((A'_i A_i^T) Delta_i + db_i),   c_i = rho/||g_i||.

An EinsumDense layer that contracts its input's trailing axes is a Dense
layer on reshaped tensors, and MultiHeadAttention is four of them around a
weightless (per-example) attention product. LayerNormalization is the same
with dgamma_i = sum_t xhat_{i,t} dy_{i,t} and dbeta_i = sum_t dy_{i,t}.
Both passes cost about a batched forward and backward pass, as SAM's do,
plus T x T products per example.

`supported(model, options)` says whether a model and step qualify: a
Sequential or functional graph of Dense, EinsumDense, MultiHeadAttention
and LayerNormalization layers (each called once) and weightless
per-example layers, a compiled mean-reduced loss, no regularisers, plain
SAM, L-SAM or J-SAM with p = 2 and one ascent step.
`per_example_sam_gradients` is then exactly the mean of the m = 1 groups'
SAM gradients that the grouped step computes.

References:
    Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", ICLR 2021, section 4.1 (m-sharpness).
    Baek, Kolter and Raghunathan, "Why is SAM Robust to Label Noise?",
    ICLR 2024, equations 2.6 (1-SAM), 2.8 (L-SAM) and 2.9 (J-SAM).
    Goodfellow, "Efficient Per-Example Gradient Computations",
    arXiv:1510.01799, 2015.
"""

from typing import Any, NamedTuple

import keras
import tensorflow as tf

from keras_sam import _keras
from keras_sam.backend.tensorflow import rank_one
from keras_sam.backend.state import state_variables
from keras_sam.core import perturbation
from keras_sam.core import step

_L = keras.layers
# Weightless layers that act on each example alone (exact types only: a
# subclass may do anything in `call`).
PER_EXAMPLE_LAYERS = (
    _L.InputLayer, _L.Activation, _L.ReLU, _L.LeakyReLU, _L.ELU, _L.Softmax,
    _L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum,
    _L.Concatenate, _L.Reshape, _L.Permute, _L.Flatten, _L.RepeatVector,
    _L.Identity, _L.Dropout, _L.GlobalAveragePooling1D,
    _L.GlobalMaxPooling1D,
)
# Operations a functional graph records for `x + y` and the like.
PER_EXAMPLE_OPS = frozenset({"Add", "Subtract", "Multiply", "Divide"})
MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")


class PerExampleResult(NamedTuple):
    grads: list  # mean over examples of the SAM gradients (loss-scaled)
    y_pred: Any  # the outputs at w
    loss: tf.Tensor  # the loss at w (the mean of the examples' losses)
    loss_perturbed: tf.Tensor  # the mean of the losses at w + eps_i
    grad_norm: tf.Tensor  # the mean of ||g_i||, unscaled
    updates: dict  # index into `state` -> value, from the pass at w


def supported(model, options) -> bool:
    """Whether `per_example_sam_gradients` computes `model`'s 1-SAM step.

    Args:
        model: A compiled Keras model.
        options: The step's `SAMOptions`.

    Returns:
        True for m = 1, p = 2, gradient perturbations with one ascent step
        and no ASAM, mask or second order, any `gradient_rule`; a
        `keras.Sequential` or functional model whose layers are Dense,
        EinsumDense in Dense form (`rank_one.dense_form`),
        MultiHeadAttention over sequences (no dropout, gate, sliding window
        or masks; `use_causal_mask` allowed) and LayerNormalization (each
        called once, float32 or one dtype, no LoRA or quantisation,
        LayerNormalization over the last axis) and
        weightless per-example layers (`PER_EXAMPLE_LAYERS`, dropout only
        at rate 0); and the compiled loss reduced by "sum_over_batch_size",
        with no regulariser.
    """
    return (
        _options_supported(options)
        and _loss_supported(model)
        and _layers_supported(model)
    )


def _options_supported(options) -> bool:
    return (
        options.m == 1
        and options.p == 2.0
        and options.perturbation == "gradient"
        and not options.adaptive
        and options.ascent_steps == 1
        and not options.second_order
        and options.perturbed_fraction == 1.0
    )


def _loss_supported(model) -> bool:
    """A compiled loss that is the mean of the examples' losses."""
    if model.loss is None or model.optimizer is None:
        return False
    if _keras.overrides_loss_computation(model):
        return False
    losses = tf.nest.flatten(model.loss)
    if any(
        getattr(loss, "reduction", MEAN_REDUCTIONS[0]) not in MEAN_REDUCTIONS
        for loss in losses
    ):
        return False
    return not any(
        getattr(v, "regularizer", None) is not None for v in model.weights
    )


# The layers whose per-example gradients `rank_one` writes in closed form.
WEIGHTED_LAYERS = (
    _L.Dense, _L.EinsumDense, _L.MultiHeadAttention, _L.LayerNormalization,
)
# MultiHeadAttention keyword arguments `rank_one` computes; any other must
# be None or False (no masks, no attention scores returned).
ATTENTION_ARGUMENTS = ("key", "use_causal_mask", "training")


def _layers_supported(model) -> bool:
    calls = _calls(model)
    if calls is None:
        return False
    weighted = [op for op, _ in calls if type(op) in WEIGHTED_LAYERS]
    if len({id(op) for op in weighted}) < len(weighted):
        return False  # a layer called twice: its gradients add up
    covered = {id(v) for op in weighted for v in op.trainable_variables}
    return all(_call_supported(*call) for call in calls) and all(
        id(v) in covered for v in model.trainable_variables
    )


def _calls(model):
    """`(operation, kwargs)` of each call `model.call` makes, or None if it
    is not a graph."""
    if type(model).call is keras.Sequential.call:
        return [(layer, {}) for layer in model.layers]
    if type(model).call is _keras.Functional.call:
        return _keras.graph_calls(model)
    return None


def _call_supported(op, kwargs) -> bool:
    if not isinstance(op, keras.layers.Layer):
        return (
            type(op).__name__ in PER_EXAMPLE_OPS
            and type(op).__module__ == "keras.src.ops.numpy"
        )
    if getattr(op, "activity_regularizer", None) is not None:
        return False
    if type(op) is _L.MultiHeadAttention:
        return _attention_supported(op, kwargs)
    if type(op) in (_L.Dense, _L.EinsumDense):
        return _dense_supported(op)
    if type(op) is _L.LayerNormalization:
        return not op.rms_scaling and _plain_dtype(op) and _last_axis(op)
    if type(op) is _L.Dropout:
        return op.rate == 0
    return (
        type(op) in PER_EXAMPLE_LAYERS
        and not op.trainable_weights
        and getattr(op, "axis", -1) != 0
    )


def _dense_supported(layer) -> bool:
    if type(layer) is _L.EinsumDense and rank_one.dense_form(layer) is None:
        return False
    return (
        not layer.lora_enabled
        and _plain_dtype(layer)
        and getattr(layer, "quantization_mode", None) is None
    )


def _attention_supported(layer, kwargs) -> bool:
    """Self- or cross-attention over sequences, as `rank_one` computes it:
    no dropout, gate, sliding window or masks."""
    config = layer.get_config()
    projections = (
        layer.query_dense, layer.key_dense, layer.value_dense,
        layer.output_dense,
    )
    return (
        layer.dropout == 0
        and not config.get("use_gate", False)
        and config.get("sliding_window") is None
        and layer.query_dense.equation.startswith("abc,")
        and _plain_dtype(layer)
        and all(_call_supported(p, {}) for p in projections)
        and all(
            name in ATTENTION_ARGUMENTS or value is None or value is False
            for name, value in kwargs.items()
        )
    )


def _plain_dtype(layer) -> bool:
    policy = layer.dtype_policy
    return policy.compute_dtype == policy.variable_dtype


def _last_axis(layer) -> bool:
    axes = layer.axis if isinstance(layer.axis, list) else [layer.axis]
    try:
        rank = len(layer.input.shape)
    except (AttributeError, ValueError):
        return False
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def per_example_sam_gradients(
    model, x, y=None, sample_weight=None, *, rho, gradient_rule="sam",
    state=None,
):
    """The mean over examples of the per-example (m = 1) SAM gradients.

    Both passes run batched; no weights are copied per example. The result
    equals the grouped step with m = 1 (one group per example) to float
    tolerance, for models that `supported` accepts.

    Args:
        model: A compiled Keras model that `supported` accepts.
        x, y, sample_weight: The replica's batch.
        rho: Scalar, the radius of every example's perturbation.
        gradient_rule: "sam" (the gradient at w + eps_i), "logit" (L-SAM:
            dl/df at w + eps_i times df/dw at w, Baek et al. eq. 2.8) or
            "jacobian" (J-SAM: dl/df at w times df/dw at w + eps_i, eq. 2.9).
        state: Optional list of state variables (as the step keeps them);
            the updates that computing the loss at w records for them are
            returned, indexed into it.

    Returns:
        A `PerExampleResult`. Gradients are of the loss as the optimizer
        scales it (`scale_loss`), like Keras' own.

    References:
        Baek, Kolter and Raghunathan, "Why is SAM Robust to Label Noise?",
        ICLR 2024, equations 2.6, 2.8 and 2.9.
    """
    weights = [v.value for v in model.trainable_variables]
    batch = (x, y, sample_weight)
    first = rank_one.Forward(model, weights)
    with tf.GradientTape(
        persistent=gradient_rule == "logit", watch_accessed_variables=False
    ) as tape:
        tape.watch(weights)
        first.watch = tape.watch
        y_pred = rank_one.run(model, x, first)
        loss, scaled, updates = _loss(model, first, batch, y_pred, state)
    outputs = tf.nest.flatten(y_pred)
    taps = [tap[-1] for tap in first.taps]
    grads = tape.gradient(scaled, taps + outputs)
    n = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)
    factors, norms = rank_one.factors(first, grads[: len(taps)], n)
    second = rank_one.Forward(model, weights, factors, _scales(norms, rho))
    if gradient_rule == "logit":
        sam_grads, loss2 = _logit_rule(model, second, batch, tape, outputs)
    else:
        cotangents = grads[len(taps):] if gradient_rule == "jacobian" else None
        sam_grads, loss2 = _descent(model, second, batch, cotangents)
    return PerExampleResult(
        step.zeros_for_none(sam_grads, weights), y_pred, loss, loss2,
        _unscaled_mean_norm(model, norms), updates,
    )


def _scales(norms, rho):
    """c_i = rho / ||g_i|| (0 where ||g_i|| is not finite), as eq. 2."""
    rho = tf.cast(rho, tf.float32)
    scales = rho / (norms + perturbation.NORM_EPSILON)
    return tf.where(tf.math.is_finite(norms), scales, 0.0)


def sam_branch(model, batch, options, rho, state):
    """The SAM branch of the grouped step for m = 1, as it returns it.

    Returns:
        `(grads, y_pred, (loss, loss_perturbed, grad_norm), updates)`.
    """
    result = per_example_sam_gradients(
        model, *batch, rho=rho, gradient_rule=options.gradient_rule,
        state=_filled(model, state),
    )
    stats = (result.loss, result.loss_perturbed, result.grad_norm)
    return result.grads, result.y_pred, stats, result.updates


def _filled(model, state):
    """`state`, filled as the backend's `evaluate` fills it when empty."""
    if not state:
        state.extend(state_variables(model))
    return state


def _loss(model, forward, batch, y_pred, state=None):
    """The loss, the scaled loss and the state updates it records."""
    x, y, sample_weight = batch
    mapping = list(zip(model.trainable_variables, forward.weights))
    with keras.StatelessScope(mapping, collect_losses=True) as scope:
        loss = _keras.compute_loss(model, x, y, y_pred, sample_weight)
    updates = {}
    for i, variable in enumerate(state or ()):
        value = scope.get_current_value(variable)
        if value is not None:
            updates[i] = value
    return loss, model.optimizer.scale_loss(loss), updates


def _descent(model, forward, batch, cotangents=None):
    """SAM's gradient at w + eps_i (J-SAM's: through the `cotangents`)."""
    weights = forward.weights
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(weights)
        y_pred = rank_one.run(model, batch[0], forward)
        loss, scaled, _ = _loss(model, forward, batch, y_pred)
    if cotangents is None:
        return tape.gradient(scaled, weights), loss
    outputs = tf.nest.flatten(y_pred)
    cotangents = step.zeros_for_none(cotangents, outputs)
    return tape.gradient(outputs, weights, output_gradients=cotangents), loss


def _logit_rule(model, forward, batch, first_tape, first_outputs):
    """L-SAM: dl/df at each w + eps_i, through df/dw at w."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        y_pred = rank_one.run(model, batch[0], forward)
        outputs = tf.nest.flatten(y_pred)
        tape.watch(outputs)
        loss, scaled, _ = _loss(model, forward, batch, y_pred)
    cotangents = step.zeros_for_none(tape.gradient(scaled, outputs), outputs)
    grads = first_tape.gradient(
        first_outputs, forward.weights, output_gradients=cotangents
    )
    return grads, loss


def _unscaled_mean_norm(model, norms):
    """The mean ||g_i||, undoing loss and replica scaling."""
    return _keras.unscale_gradient_norm(model, tf.reduce_mean(norms))
