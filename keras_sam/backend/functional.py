"""SAM's step where gradients are transforms of functions (JAX, PyTorch).

JAX's `jax.value_and_grad` and PyTorch's autograd (on fresh leaves) take
the gradient of a function of the weights; `jax.vmap` maps one over a group
axis, and `jax.jit` traces the gradient pass once for both passes. The step
is the same on both, written here once against the `Transforms` a backend
module hands in (`backend/jax/step.py`, `backend/torch/step.py`):

    pass(w)    = model(x) and compute_loss in a keras.StatelessScope
    first      = value_and_grad(pass)(w)          # loss, g, state updates
    eps, g_sam = keras_sam.core.step                # the algorithm
    commit first's state updates                    # as keras.Model would

With `m`, the batch is split into groups of m examples (and one smaller
group of what is left over), each with its own eps; their gradients weigh
in by their share of the batch. There is no conditional: with rho = 0, eps
is exactly 0 and the pass at w + eps repeats the pass at w, so the step
gives Keras' gradient bit for bit at the cost of a second pass (and one
trace, not two).
"""

from typing import Callable, NamedTuple, Optional

import keras
from keras import ops

from keras_sam import _keras
from keras_sam.backend.state import check_groups_of_one
from keras_sam.backend.state import moving_statistics
from keras_sam.backend.state import state_variables
from keras_sam.core import perturbation
from keras_sam.core import policy
from keras_sam.core import step


class Transforms(NamedTuple):
    """What a backend gives the functional step."""

    # value_and_grad(f)(weights) -> ((value, aux), grads), f -> (value, aux)
    value_and_grad: Callable
    # map_groups(fn, groups) -> fn's outputs stacked on axis 0, `groups`
    # a structure of tensors whose axis 0 is the group
    map_groups: Callable
    # normal(model, options) -> normal(shapes, kind): N(0, 1) draws that
    # depend only on the seed, the step and the kind ("random", "mask")
    normal: Callable
    # cond(model) -> cond(predicate, true_fn, false_fn): the conditional
    # step, its branches free to assign the model's variables
    cond: Callable
    # default_m(n) -> the group size without `m` for a batch of n (the
    # examples on one device under data parallelism), or None
    default_m: Callable = lambda n: None
    # (get, set) of the backend's global random state, which unseeded
    # layers draw from (PyTorch's unseeded Dropout), or None
    global_random: Optional[tuple] = None
    # trace_once(f) -> f traced at its first call and reused by the next
    # calls of the step (jax.jit: both passes trace the model once)
    trace_once: Callable = lambda f: f


def make_evaluate(model, state: list, transforms: Transforms):
    """`evaluate(weights, batch)`: one side-effect-free pass as a `Pass`.

    The pass reads every state variable at its current value and records
    what it assigns; `Pass.updates` indexes into `state`.
    """
    variables = model.trainable_variables
    training = _keras.call_has_training_arg(model)
    optimizer = model.optimizer

    def mapping(weights, values=None):
        """Every state variable at its value (or `values`), the weights at
        `weights`."""
        if values is None:
            values = [v.value for v in state]
        return list(zip(state, values)) + list(zip(variables, weights))

    def forward(weights, batch, values=None):
        x, y, sample_weight = batch
        with keras.StatelessScope(mapping(weights, values),
                                  collect_losses=True) as scope:
            read = [scope.get_current_value(v) for v in state]
            y_pred = model(x, training=True) if training else model(x)
            loss = _keras.compute_loss(model, x, y, y_pred, sample_weight)
        # What the pass assigned: a new value object (the others are the
        # values it read; committing those would undo a policy's update).
        updates = {}
        for i, v in enumerate(state):
            value = scope.get_current_value(v)
            if value is not read[i]:
                updates[i] = value
        scaled = optimizer.scale_loss(loss) if optimizer else loss
        return scaled, (loss, y_pred, updates)

    draws = _SharedDraws(transforms.global_random)

    def evaluate(weights, batch, output_grads=False, need_grads=True):
        with draws:
            return _evaluate(weights, batch, output_grads, need_grads)

    def _evaluate(weights, batch, output_grads, need_grads):
        if not need_grads:
            _, (loss, y_pred, updates) = forward(weights, batch)
            return step.Pass(loss, None, y_pred, updates)
        loss, grads, y_pred, updates, masks = gradient_pass(
            list(weights), batch, [v.value for v in state])
        y_pred = _keras.with_masks(y_pred, masks)
        if not output_grads:
            return step.Pass(loss, list(grads), y_pred, updates)
        return step.Pass(
            loss, list(grads), y_pred, updates,
            output_gradient(weights, batch, y_pred),
            lambda cotangents: vjp(weights, batch, cotangents),
        )

    @transforms.trace_once
    def gradient_pass(weights, batch, values):
        """The pass and its gradient, the state's values passed in (what a
        trace reads must be its arguments)."""
        grad_fn = transforms.value_and_grad(
            lambda w: forward(w, batch, values))
        (_, (loss, y_pred, updates)), grads = grad_fn(weights)
        return loss, list(grads), y_pred, updates, _keras.output_masks(y_pred)

    def output_gradient(weights, batch, y_pred):
        """d loss / d outputs (flat): the compiled loss of `y_pred` (the
        model's own losses do not depend on the outputs)."""
        x, y, sample_weight = batch
        values = mapping(weights)

        def data_loss(outputs):
            with keras.StatelessScope(values):
                loss = _keras.compute_loss(model, x, y, outputs,
                                           sample_weight)
            scaled = optimizer.scale_loss(loss) if optimizer else loss
            return scaled, scaled

        (_, _), grads = transforms.value_and_grad(data_loss)(y_pred)
        return keras.tree.flatten(grads)

    def vjp(weights, batch, cotangents):
        """d/dw of <cotangents, f(w)> plus the model's own losses."""
        x = batch[0]

        def surrogate(ws):
            with keras.StatelessScope(mapping(ws), collect_losses=True):
                y_pred = model(x, training=True) if training else model(x)
                own = [_keras.additional_loss(model, l) for l in model.losses]
            total = sum(
                ops.sum(ops.stop_gradient(c) * ops.cast(o, c.dtype))
                for c, o in zip(cotangents, keras.tree.flatten(y_pred))
            )
            for loss in own:
                total = total + (optimizer.scale_loss(loss) if optimizer
                                 else loss)
            return total, total

        (_, _), grads = transforms.value_and_grad(surrogate)(list(weights))
        return list(grads)

    evaluate.draws = draws
    return evaluate


class _SharedDraws:
    """Every pass of a step draws what the first pass drew from the
    backend's global random state; after the step that state is where the
    first pass left it, as after Keras' own single pass."""

    def __init__(self, global_random):
        self.get, self.set = global_random or (None, None)
        self.start = None if self.get is None else self.get()
        self.after_first = None

    def __enter__(self):
        if self.start is not None:
            self.set(self.start)

    def __exit__(self, *error):
        if self.start is not None and self.after_first is None:
            self.after_first = self.get()

    def finish(self):
        """Leaves the global random state as the first pass left it."""
        if self.after_first is not None:
            self.set(self.after_first)


def sam_gradients(
    model, options, rho, x, y=None, sample_weight=None, step_state=None, *,
    transforms: Transforms,
):
    """SAM's descent gradient for a batch; commits the state updates.

    Args:
        model: The compiled model.
        options: Its `SAMOptions` (checked by `keras_sam.backend.
            check_options`).
        rho: Scalar variable, the radius.
        x, y, sample_weight: The batch.
        step_state: The `policy.StepState` (the cheap SAMs, Momentum-SAM,
            a kept mask; None otherwise).
        transforms: The backend's `Transforms`.

    Returns:
        A `step.StepResult`, and `[]` (nothing deferred).
    """
    step.check_logit_loss(model, options.gradient_rule)
    policy.check_state(options, step_state)
    batch = (x, y, sample_weight)
    state = state_variables(model)
    evaluate = make_evaluate(model, state, transforms)
    weights = [v.value for v in model.trainable_variables]
    inputs = step.Inputs(
        transforms.normal(model, options),
        [v.name for v in model.trainable_variables],
    )
    if options.perturbation == "momentum":
        inputs = inputs._replace(
            momentum=policy.momentum_direction(step_state))
    iterations = model.optimizer.iterations
    cond = transforms.cond(model)
    m = group_size(model, options.m, x, transforms.default_m)
    first = None
    if m is None and options.trigger == "adaptive":  # decides from ||g||
        first = step.first_pass(evaluate, weights, batch, options)
        use_sam = policy.use_sam(options, rho, iterations, step_state,
                                 _norm(model, first))
    else:
        use_sam = policy.use_sam(options, rho, iterations)

    def kept_mask(grads):
        return policy.kept_mask(options, step_state, grads, weights,
                                inputs.normal, iterations, cond)

    def sam():
        if m is not None:
            return _grouped(model, evaluate, weights, batch, options, rho,
                            inputs, transforms, m, state)
        one, grads, loss2 = _sam_pass(
            model, evaluate, weights, batch, options, rho,
            inputs._replace(mask=kept_mask), transforms, first,
        )
        policy.store_looksam_direction(step_state, one.grads, grads)
        norm = perturbation.global_norm(grads) if one.grads is None else (
            _norm(model, one))
        return _Group(grads, one.y_pred, (one.loss, loss2, norm),
                      one.updates)

    def base():
        one = first if first is not None else evaluate(weights, batch)
        grads = policy.off_step_gradient(options, step_state, one.grads, rho)
        return _Group(list(grads), one.y_pred,
                      (one.loss, one.loss, _norm(model, one)), one.updates)

    # Without a policy, no conditional: with rho = 0, eps is 0 and the SAM
    # branch gives the base gradient (one trace, two passes).
    alone = policy.rho_decides_alone(options) and options.off_step == "base"
    result = sam() if alone else cond(use_sam, sam, base)
    evaluate.draws.finish()
    for i, value in result.updates.items():
        state[i].assign(value)
    loss, loss2, norm = result.stats
    stats = {
        "grad_norm": ops.cast(norm, "float32"),
        "sharpness": ops.cast(loss2 - loss, "float32"),
        "sam_weight": ops.cast(use_sam, "float32"),
    }
    return step.StepResult(result.grads, result.y_pred, loss, stats), []


def _sam_pass(model, evaluate, weights, batch, options, rho, inputs,
              transforms, first=None):
    """`(first, descent gradient, L(w + eps))` of one group (`first`: its
    pass at w, if already taken)."""
    if not options.second_order:
        if first is None:
            first = step.first_pass(evaluate, weights, batch, options)
        grads, loss2 = step.descent(
            evaluate, weights, batch, first, options, rho, inputs
        )
        return first, grads, loss2

    def objective(ws):
        """L(w + eps(w)), through the whole pipeline (Foret et al.
        appendix C.4)."""
        first = evaluate(ws, batch)
        eps = step.perturb(
            evaluate, ws, batch, first.grads, options, rho, inputs
        )
        second = evaluate(step.add(ws, eps), batch, need_grads=False)
        kept = (first.loss, first.grads, first.y_pred, first.updates)
        return model.optimizer.scale_loss(second.loss), (kept, second.loss)

    (_, (kept, loss2)), grads = transforms.value_and_grad(objective)(
        list(weights)
    )
    return step.Pass(*kept), list(grads), loss2


class _Group(NamedTuple):
    """One group's results, or several groups' stacked on axis 0."""

    grads: list
    y_pred: object
    stats: tuple  # loss, loss at w + eps, ||g||
    updates: dict  # index into the state -> value


def _grouped(model, evaluate, weights, batch, options, rho, inputs,
             transforms, m, state):
    """One eps per group of m examples; the leftover examples form one
    smaller group; each group weighs in by its share of the batch."""
    named = {"x": batch[0], "y": batch[1], "sample_weight": batch[2]}
    named = {k: v for k, v in named.items() if v is not None}
    n = batch_size(batch[0])
    q = n // m

    def one_group(group):
        group_batch = (group["x"], group.get("y"), group.get("sample_weight"))
        first, grads, loss2 = _sam_pass(
            model, evaluate, weights, group_batch, options, rho, inputs,
            transforms,
        )
        return _Group(grads, first.y_pred,
                      (first.loss, loss2, _norm(model, first)), first.updates)

    parts, sizes = [], []
    if q:
        head = keras.tree.map_structure(
            lambda t: ops.reshape(t[: q * m], (q, m) + tuple(t.shape[1:])),
            named,
        )
        out = transforms.map_groups(one_group, head)
        y_pred = keras.tree.map_structure(
            lambda t: ops.reshape(t, (q * m,) + tuple(t.shape[2:])),
            out.y_pred,
        )
        parts.append(out._replace(y_pred=y_pred))
        sizes += [m] * q
    if n % m:
        rest = keras.tree.map_structure(lambda t: t[q * m:], named)
        out = one_group(rest)
        stacked = keras.tree.map_structure(
            lambda t: ops.expand_dims(t, 0),
            (out.grads, out.stats, out.updates),
        )
        grads, stats, updates = stacked
        parts.append(_Group(grads, out.y_pred, stats, updates))
        sizes.append(n % m)
    joined = keras.tree.map_structure(
        lambda *t: ops.concatenate(t, axis=0), *parts
    )
    share = ops.convert_to_tensor([s / n for s in sizes], "float32")
    grads = [_weighted_sum(share, g) for g in joined.grads]
    stats = tuple(
        _weighted_sum(share, ops.cast(v, "float32")) for v in joined.stats
    )
    updates = _merged_updates(model, joined.updates, state, sizes)
    return _Group(grads, joined.y_pred, stats, updates)


def _weighted_sum(weights, stacked):
    """sum_g weights[g] * stacked[g], for tensors stacked on axis 0."""
    weights = ops.reshape(ops.cast(weights, stacked.dtype),
                          (-1,) + (1,) * (len(stacked.shape) - 1))
    return ops.sum(weights * stacked, axis=0)


def _merged_updates(model, updates: dict, state: list, sizes: list) -> dict:
    """One state update from the groups' (stacked on axis 0).

    A group's change of a float variable (or of a metric's) is an
    increment, and increments add up across groups, as one pass over the
    batch would add them; BatchNormalization's moving statistics take the
    groups' mean weighted by size; other integer state (seed generators) is
    the same in every group.
    """
    metric_ids = {id(v) for v in model.metrics_variables}
    averaged = moving_statistics(model)
    total = float(sum(sizes))
    merged = {}
    for i, values in updates.items():
        variable = state[i]
        floating = "float" in keras.backend.standardize_dtype(values.dtype)
        if not (floating or id(variable) in metric_ids):
            merged[i] = values[0]
            continue
        old = ops.cast(variable.value, values.dtype)
        if id(variable) in averaged:
            share = [s / total for s in sizes]
        else:
            share = [1.0] * len(sizes)
        share = ops.convert_to_tensor(share, "float32")
        merged[i] = old + _weighted_sum(share, values - old)
    return merged


def batch_size(structure) -> int:
    """The batch size of a structure of tensors (its first leaf's)."""
    first = next(t for t in keras.tree.flatten(structure) if t is not None)
    return int(first.shape[0])


def group_size(model, m, x, default_m=lambda n: None):
    """The `m` to split the batch by, or None when it is one group.

    Without `m`, `default_m(n)` decides (data parallelism: each device's
    examples are a group).

    Raises:
        ValueError: m=1 on a model with BatchNormalization (a batch of one).
    """
    n = batch_size(x)
    if m is None:
        m = default_m(n)
        return m if m is not None and m < n else None
    check_groups_of_one(model, m)
    return None if n <= m else m


def _norm(model, first):
    """||g|| of the true gradient (the optimizer's loss scale undone)."""
    return _keras.unscale_gradient_norm(
        model, perturbation.global_norm(first.grads)
    )
