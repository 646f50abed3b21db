"""The TensorFlow half of SAM's step: passes without side effects.

A pass runs the user's model and `compute_loss` exactly as Keras' own
`train_step` does (`model(x, training=True)`, regularisers, `add_loss`,
metrics updated in `call`, unseeded `keras.random` draws), but inside a
`keras.StatelessScope`: no variable is assigned, every assignment is
recorded. Both passes of a step therefore read the same random state (the
same dropout masks), and only the first pass's recorded state updates are
committed, after the step: batch statistics, seed generators and metrics
advance exactly as under `keras.Model`.
"""

import warnings
from typing import NamedTuple

import keras
import tensorflow as tf

from keras_sam import _keras
from keras_sam.backend.tensorflow import groups
from keras_sam.backend.tensorflow import per_example
from keras_sam.backend.tensorflow import sync
from keras_sam.backend.state import moving_statistics
from keras_sam.backend.state import state_variables
from keras_sam.core import perturbation
from keras_sam.core import policy
from keras_sam.core import step


def apply_gradients(optimizer, grads, variables):
    """`optimizer.apply`, as Keras' own step applies gradients here."""
    optimizer.apply(grads, variables)


def stateless_step(model, train_step):
    """The step as Keras' TensorFlow trainer calls it: unchanged."""
    del model
    return train_step


def make_evaluate(model, state: list, dense=False, traced=False):
    """`evaluate(weights, batch)`: one side-effect-free pass as a `Pass`.

    `weights`, a list of tensors, is mapped onto `model.trainable_variables`
    (regularisers read them too). `state` collects the state variables, so
    that `Pass.updates` indexes into it. `Pass.grads` are as the tape gives
    them (what Keras' own step applies); `Pass.summed` has each row of a
    row-sparse gradient once, for the ascent. `dense=True` gives dense
    gradients instead (a mapped group's step). `traced=True` makes the
    gradient pass one `tf.function` inside the step's: traced once, called
    by both passes and both branches of the conditional, so that SAM's
    first call traces the model once, as Keras' own step does (not under
    an outer tape: `second_order` differentiates through the passes).
    Under `compiles_passes(model)` XLA compiles that function.
    """
    variables = model.trainable_variables
    training = _keras.call_has_training_arg(model)
    optimizer = model.optimizer

    def evaluate(weights, batch, output_grads=False, need_grads=True):
        if gradient_pass is not None and not output_grads:
            return gradient_pass(weights, batch, need_grads)
        return _evaluate(weights, batch, output_grads, need_grads)

    def _evaluate(weights, batch, output_grads, need_grads):
        x, y, sample_weight = batch
        mapping = list(zip(variables, weights))
        with tf.GradientTape(
            watch_accessed_variables=False, persistent=output_grads
        ) as tape:
            tape.watch(weights)
            with keras.StatelessScope(mapping, collect_losses=True) as scope:
                y_pred = model(x, training=True) if training else model(x)
                loss = _keras.compute_loss(model, x, y, y_pred, sample_weight)
                own = [_keras.additional_loss(model, l) for l in model.losses]
            scaled = optimizer.scale_loss(loss) if optimizer else loss
        if not state:
            state.extend(state_variables(model))
        updates = {}
        for i, v in enumerate(state):
            value = scope.get_current_value(v)
            if value is not None:
                updates[i] = value
        targets = weights
        if not need_grads:
            return step.Pass(loss, None, y_pred, updates)
        outputs = tf.nest.flatten(y_pred)
        if output_grads:
            tape.watch(outputs)
            grads, out_grads = tape.gradient(scaled, [targets, outputs])
        else:
            grads, out_grads = tape.gradient(scaled, targets), None
        grads = step.zeros_for_none(grads, targets)
        if dense:
            grads = _dense(grads)
        summed = [summed_rows(g) for g in grads]
        if all(a is b for a, b in zip(summed, grads)):
            summed = None

        def vjp(cotangents):
            """grad of <cotangents, f> plus the model's own losses."""
            with tape:
                surrogate = tf.add_n(
                    [
                        tf.reduce_sum(tf.stop_gradient(c) * tf.cast(o, c.dtype))
                        for c, o in zip(cotangents, outputs)
                    ]
                    + [optimizer.scale_loss(l) for l in own]
                )
            grads = tape.gradient(surrogate, targets)
            return step.zeros_for_none(grads, targets)

        return step.Pass(
            loss, grads, y_pred, updates, out_grads, vjp, summed
        )

    gradient_pass = None
    if traced and tf.inside_function():
        gradient_pass = _one_trace(_evaluate, compiles_passes(model))
    return evaluate


def _one_trace(evaluate, jit_compile):
    """`evaluate(weights, batch, need_grads)` as a `tf.function` (retraced
    only for another batch signature or `need_grads`), compiled by XLA if
    `jit_compile`. What its boundary drops is put back: the outputs' Keras
    masks, and a row-sparse gradient's static dense shape (its weight's)."""

    @tf.function(autograph=False, jit_compile=jit_compile)
    def gradient_pass(weights, batch, need_grads):
        one = evaluate(weights, batch, False, need_grads)._replace(vjp=None)
        return one, _keras.output_masks(one.y_pred)

    def shaped(grads, weights):
        if grads is None:
            return None
        return [
            tf.IndexedSlices(g.values, g.indices, tf.constant(
                w.shape.as_list(), g.dense_shape.dtype))
            if isinstance(g, tf.IndexedSlices) else g
            for g, w in zip(grads, weights)
        ]

    def call(weights, batch, need_grads):
        # As tensors: the weights at w are variables, at w + eps tensors,
        # and a variable argument would trace (and compile) a second time.
        values = [tf.convert_to_tensor(w) for w in weights]
        one, masks = gradient_pass(values, batch, need_grads)
        return one._replace(
            y_pred=_keras.with_masks(one.y_pred, masks),
            grads=shaped(one.grads, weights),
            summed=shaped(one.summed, weights),
        )

    return call


def sam_gradients(
    model, options, rho, x, y=None, sample_weight=None, step_state=None
):
    """SAM's descent gradient for one replica's batch; commits the state.

    With `rho == 0`, or when the policy (`sam_every`, `sam_from`, AE-SAM's
    trigger) skips SAM, the step is a single pass: the base optimizer's
    gradient, bit for bit Keras' own (or LookSAM's reuse of it).

    Args:
        model: The compiled model.
        options: Its `SAMOptions`.
        rho: Scalar variable, the radius.
        x, y, sample_weight: The replica's batch.
        step_state: The `policy.StepState` (needed by AE-SAM, LookSAM,
            Momentum-SAM and a kept mask; None otherwise).

    Returns:
        A `StepResult`, and the moving statistics to average across replicas
        with `sync_statistics` after the optimizer step (`[]` unless
        `options.sync_moving_statistics`).
    """
    step.check_logit_loss(model, options.gradient_rule)
    policy.check_state(options, step_state)
    batch = (x, y, sample_weight)
    state = []
    evaluate = make_evaluate(model, state,
                             traced=not options.second_order)
    normal = _normal(model, options)
    m = groups.group_size(model, options.m, batch)
    if m is None:
        result, updates = _whole_batch(
            model, evaluate, batch, options, rho, normal, step_state
        )
    else:
        use_sam = policy.use_sam(options, rho, model.optimizer.iterations)
        result, updates = _grouped(
            model, evaluate, batch, options, rho, normal, use_sam, m, state
        )
    synced = sync.synced_statistics(model, options)
    deferred = [(state[i], updates.pop(i)) for i in list(updates)
                if id(state[i]) in synced]
    for i, value in updates.items():
        state[i].assign(value)
    return result, deferred


def _whole_batch(model, evaluate, batch, options, rho, normal, step_state):
    """The step with one eps for the replica's whole batch.

    Both branches run their own pass at w, so the SAM branch's g dies once
    eps is formed (one extra copy of the weights, w + eps, over SGD). Only
    AE-SAM, which decides from ||g||, takes that pass before the branch.
    """
    weights = [v.value for v in model.trainable_variables]
    iterations = model.optimizer.iterations
    inputs = step.Inputs(normal, [v.name for v in model.trainable_variables])
    if options.perturbation == "momentum":
        inputs = inputs._replace(
            momentum=policy.momentum_direction(step_state))
    first, norm = None, None
    if options.trigger == "adaptive":
        first = step.first_pass(evaluate, weights, batch, options)
        norm = _unscaled_norm(model, first.ascent_grads)
    use_sam = policy.use_sam(options, rho, iterations, step_state, norm)

    def kept_mask(grads):
        return policy.kept_mask(
            options, step_state, grads, weights, normal, iterations, tf.cond
        )

    def sam():
        one = first
        if one is None and not options.second_order:
            one = step.first_pass(evaluate, weights, batch, options)
        one, grads, loss2 = _sam_pass(
            model, evaluate, weights, batch, options, rho,
            inputs._replace(mask=kept_mask), one,
        )
        policy.store_looksam_direction(step_state, one.ascent_grads, grads)
        norm = _unscaled_norm(
            model, grads if one.grads is None else one.ascent_grads
        )
        if options.off_step == "looksam":  # its off-steps' gradient is dense
            grads = _dense(grads)
        return grads, one.y_pred, (one.loss, loss2, norm), one.updates

    def base():
        one = first if first is not None else evaluate(weights, batch)
        grads = policy.off_step_gradient(options, step_state, one.grads, rho)
        stats = (one.loss, one.loss, _unscaled_norm(model, one.ascent_grads))
        return grads, one.y_pred, stats, one.updates

    grads, y_pred, (loss, loss2, norm), updates = _branch(
        model, options, use_sam, sam, base
    )
    stats = _stats_from(loss, loss2, norm, use_sam)
    return step.StepResult(grads, y_pred, loss, stats), updates


def _sam_pass(model, evaluate, weights, batch, options, rho, inputs, first):
    """`(first, descent gradient, L(w + eps))` of one group."""
    if options.second_order:
        return _second_order(
            model, evaluate, weights, batch, rho, options, inputs
        )
    grads, loss2 = step.descent(
        evaluate, weights, batch, first, options, rho, inputs
    )
    return first, grads, loss2


def _second_order(model, evaluate, weights, batch, rho, options, inputs):
    """d/dw L(w + eps(w)), through the whole pipeline (ASAM's T_w, the
    mask, the dual vector; Foret et al. appendix C.4).

    Returns:
        `(first, grads, loss_perturbed)`, `first` the pass at w.
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(weights)
        first = evaluate(weights, batch)
        eps = step.perturb(
            evaluate, weights, batch, first.ascent_grads, options, rho, inputs
        )
        second = evaluate(step.add(weights, eps), batch, need_grads=False)
        scaled = model.optimizer.scale_loss(second.loss)
    grads = step.zeros_for_none(tape.gradient(scaled, weights), weights)
    return first, grads, second.loss


def _grouped(model, evaluate, batch, options, rho, normal, use_sam, m, state):
    """The step with one eps per group of `m` examples (m-sharpness)."""
    weights = [v.value for v in model.trainable_variables]
    names = [v.name for v in model.trainable_variables]
    n = groups.batch_size(batch[0])

    # Inside a group, gradients are dense: the groups' mean is dense, and
    # a mapped function's outputs must have one fixed shape.
    evaluate_group = make_evaluate(model, state, dense=True)

    def one_group(named):
        group = (named["x"], named.get("y"), named.get("sample_weight"))
        inputs = step.Inputs(normal, names)
        first = None
        if not options.second_order:
            first = step.first_pass(evaluate_group, weights, group, options)
        first, grads, loss2 = _sam_pass(
            model, evaluate_group, weights, group, options, rho, inputs, first
        )
        norm = _unscaled_norm(
            model, grads if first.grads is None else first.ascent_grads
        )
        stats = (first.loss, loss2, norm)
        return _Groups(_dense(grads), first.y_pred, stats, first.updates)

    def in_groups():
        """Groups of m, and the examples left over as one smaller group;
        each group weighs in by its share of the batch, as its examples
        do in the batch's mean loss."""
        named = {"x": batch[0], "y": batch[1], "sample_weight": batch[2]}
        named = {k: v for k, v in named.items() if v is not None}
        full, sizes, rest = groups.split_with_remainder(named, n, m)
        parts = []  # (a _Groups of stacked results, the groups' sizes)
        if full is not None:
            out = groups.map_groups(one_group, full)
            y_pred = groups.merge_groups(out.y_pred)
            if not isinstance(n, int):  # without the padding group
                y_pred = tf.nest.map_structure(
                    lambda t: t[: (n // m) * m], y_pred)
            parts.append((out._replace(y_pred=y_pred), sizes))
        if rest is not None:  # with a dynamic n, possibly empty: its
            # size of 0 then drops it from every sum below
            out = one_group(rest)
            stacked = tf.nest.map_structure(lambda t: t[None], out)
            size = tf.reshape(groups.batch_size(rest["x"]), [1])
            parts.append((stacked._replace(y_pred=out.y_pred), size))
        (grads, y_pred, stats, updates), sizes = _concatenated(parts)
        share = tf.math.divide_no_nan(tf.cast(sizes, tf.float32),
                                      tf.cast(n, tf.float32))
        grads = [groups.weighted_sum(share, g) for g in grads]
        stats = tuple(
            groups.weighted_sum(share, tf.cast(v, tf.float32)) for v in stats
        )
        metric_ids = {id(v) for v in model.metrics_variables}
        updates = groups.merge_updates(
            updates, state, moving_statistics(model), metric_ids, sizes
        )
        return grads, y_pred, stats, updates

    def base():
        first = evaluate(weights, batch)
        norm = _unscaled_norm(model, first.ascent_grads)
        stats = (first.loss, first.loss, norm)
        return _dense(first.grads), first.y_pred, stats, first.updates

    if (
        m == 1
        and options.off_step == "base"
        and per_example.supported(model, options)
    ):
        # Dense/LayerNorm models: exact 1-SAM without per-example copies.
        sam = lambda: per_example.sam_branch(model, batch, options, rho, state)
    else:
        sam = in_groups
    grads, y_pred, (loss, loss2, norm), updates = _branch(
        model, options, use_sam, sam, base
    )
    stats = _stats_from(loss, loss2, norm, use_sam)
    return step.StepResult(grads, y_pred, loss, stats), updates


class _Groups(NamedTuple):
    """One group's results, or several groups' stacked on axis 0 (their
    predictions joined along the batch)."""

    grads: list
    y_pred: object
    stats: tuple  # loss, loss at w + eps, ||g||
    updates: dict  # index into the state -> value


def _concatenated(parts):
    """The parts' results (and sizes) as one stack of groups."""
    outputs = [p[0] for p in parts]
    sizes = tf.concat([tf.cast(p[1], tf.int32) for p in parts], 0)
    joined = tf.nest.map_structure(lambda *t: tf.concat(t, 0), *outputs)
    return joined, sizes


def _branch(model, options, use_sam, sam, base):
    """`tf.cond(use_sam, sam, base)`: a step that skips SAM costs one pass.

    Except where XLA compiles the whole step on a CPU, whose convolutions
    inside a conditional (or a loop) lose their fast path and run about
    100 times slower (jax-ml/jax#12868, open; measured 9.8 s vs 0.1 s per
    step on the benchmark CNN): there, when only rho decides, the SAM
    branch runs unconditionally. With rho == 0 it gives the base gradient all the same
    (eps = 0, so the second pass is at w), at the cost of a second pass.
    """
    if _xla_on_cpu(model):
        if policy.rho_decides_alone(options):
            return sam()
        warnings.warn(
            "Under XLA on CPU, the step of `sam_every`, `sam_from` or "
            "trigger='adaptive' is a tf.cond, in which convolutions run "
            "about 100x slower (jax-ml/jax#12868). Compile with "
            "jit_compile=False on CPU (XLA on GPU/TPU is unaffected).",
            stacklevel=2,
        )
    return tf.cond(use_sam, sam, base)


def _xla_on_cpu(model) -> bool:
    return whole_step_compiled(model) and not (
        tf.config.list_logical_devices("GPU")
        or tf.config.list_logical_devices("TPU")
    )


def compiles_passes(model) -> bool:
    """Whether XLA compiles SAM's gradient pass rather than its whole step.

    Under `jit_compile=True`, where every pass of the step is the one
    traced gradient pass (no `second_order`, no m-groups, `gradient_rule=
    "sam"`), XLA compiles that pass alone: called two or three times with
    the same shapes, it is compiled once, the size of `keras.Model`'s step,
    where a compiled whole step holds every pass and compiles each (2.6x
    SGD's compile time on ResNet-20). The rest of the step (norms, eps,
    the conditional, the optimizer) runs in TensorFlow's graph.
    """
    options = model.sam_options
    return (
        model.jit_compile is True
        and options.m is None
        and not options.second_order
        and options.gradient_rule == "sam"
    )


def whole_step_compiled(model) -> bool:
    """Whether Keras should compile the whole step with XLA."""
    return model.jit_compile is True and not compiles_passes(model)


def summed_rows(grad):
    """A row-sparse gradient with each row once (ascending), summed.

    `tape.gradient` gives a gather of a weight (an `Embedding`) as
    `tf.IndexedSlices` with one row per lookup: a token used k times is k
    rows. Norms and elementwise maps of those rows are not the gradient's;
    of the summed rows they are, and the gradient stays sparse (no dense
    copy of a large table). Dense tensors are returned as they are.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    # Rows in ascending order: Keras' sparse arithmetic assumes it (keras
    # ops.add of two IndexedSlices with unsorted indices misplaces rows in
    # `indexed_slices_union_indices_and_values`, Keras 3.15; no upstream
    # issue found). A stable sort keeps each row's summation order.
    order = tf.argsort(grad.indices, stable=True)
    indices = tf.gather(grad.indices, order)
    rows, positions = tf.unique(indices)
    values = tf.math.unsorted_segment_sum(
        tf.gather(grad.values, order), positions, tf.shape(rows)[0]
    )
    return tf.IndexedSlices(values, rows, grad.dense_shape)


def _dense(grads) -> list:
    """Gradients as dense tensors: the branches of a `tf.cond` must agree,
    and a grouped step's mean gradient is dense where an embedding's own
    gradient is `tf.IndexedSlices`."""
    return [tf.convert_to_tensor(g) for g in grads]


def _normal(model, options):
    """`normal(shapes, kind)`: standard normal draws, stateless, from a seed
    of this step, replica and kind ("random" eps or "mask")."""

    def seed(kind):
        step_index = model.optimizer.iterations
        if kind == "mask":
            step_index = step_index // options.mask_update_every
        pair = tf.stack([options.seed, tf.cast(step_index, tf.int32)])
        if kind == "mask":  # a draw of its own, not the random eps's
            pair = tf.random.experimental.stateless_fold_in(pair, 1)
        replica = tf.distribute.get_replica_context()
        if replica is not None:
            pair = tf.random.experimental.stateless_fold_in(
                pair, replica.replica_id_in_sync_group
            )
        return pair

    def normal(shapes, kind):
        pairs = tf.random.experimental.stateless_split(seed(kind),
                                                       num=len(shapes))
        return [
            tf.random.stateless_normal(shape, pairs[i], dtype=tf.float32)
            for i, shape in enumerate(shapes)
        ]

    return normal


def _unscaled_norm(model, grads):
    """||g|| of the true local gradient (undo loss and replica scaling)."""
    return _keras.unscale_gradient_norm(model, perturbation.global_norm(grads))


def _stats_from(loss, loss_perturbed, grad_norm, use_sam) -> dict:
    unscale = _keras.unscale_loss_for_distribution
    sharpness = tf.cast(unscale(loss_perturbed) - unscale(loss), tf.float32)
    return {
        "grad_norm": tf.cast(grad_norm, tf.float32),
        "sharpness": sharpness,
        "sam_weight": tf.cast(use_sam, tf.float32),
    }
