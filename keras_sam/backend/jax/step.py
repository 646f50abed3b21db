"""The JAX half of SAM's step.

Keras' JAX trainer is stateless: it calls `train_step(state, data)` with
the values of the trainable, non-trainable, optimizer and metrics variables
and takes `(logs, new_state)` back, inside `jax.jit`. `stateless_step`
turns SAMModel's step (written as Keras' TensorFlow and PyTorch trainers
call it, `train_step(data)`, assigning variables) into that form: the step
runs in a `keras.StatelessScope` that maps every variable to its value in
`state`, and what it assigns is the new state. SAM's own variables (rho and
its statistics' trackers) travel in the metrics part of the state (see
`SAMModel.metrics_variables`).

The gradient itself is `jax.value_and_grad` of a side-effect-free pass
(`keras_sam.backend.functional`), and m-groups are `jax.vmap`ped.
"""

import functools

import jax
import keras

from keras_sam.backend import functional


def _value_and_grad(f):
    return jax.value_and_grad(f, has_aux=True)


def _batch_shards():
    """`(distribution, shards)`: the active `keras.distribution` and how
    many ways it splits the batch, or `(None, 1)`."""
    distribution = keras.distribution.distribution()
    name = getattr(distribution, "batch_dim_name", None)
    if name is None:
        return None, 1
    mesh = distribution.device_mesh
    return distribution, mesh.shape[list(mesh.axis_names).index(name)]


def _default_m(n):
    """Under data parallelism, each device's examples: m-sharpness with
    m = the per-device batch, as each replica under tf.distribute (a
    batch that does not split evenly is one group)."""
    _, shards = _batch_shards()
    return n // shards if shards > 1 and n % shards == 0 else None


def _map_groups(fn, groups):
    """`jax.vmap` over the group axis; under data parallelism that axis is
    laid out over the batch's devices, so each group's ascent (its eps
    from its own gradient) stays on its device: only the descent
    gradients are reduced across devices."""
    distribution, shards = _batch_shards()
    count = functional.batch_size(groups)
    if shards > 1 and count % shards == 0:
        def on_devices(t):
            layout = keras.distribution.TensorLayout(
                [distribution.batch_dim_name] + [None] * (len(t.shape) - 1),
                distribution.device_mesh,
            )
            return keras.distribution.distribute_tensor(t, layout)

        groups = keras.tree.map_structure(on_devices, groups)
    return jax.vmap(fn)(groups)


def _normal(model, options):
    """Draws from the seed, the step and the kind: the same in both
    passes of a step, fresh at the next."""

    def normal(shapes, kind):
        step_index = model.optimizer.iterations.value
        key = jax.random.key(options.seed)
        if kind == "mask":
            step_index = step_index // options.mask_update_every
            key = jax.random.fold_in(key, 1)
        key = jax.random.fold_in(key, step_index)
        keys = jax.random.split(key, len(shapes))
        return [
            jax.random.normal(k, tuple(shape), "float32")
            for k, shape in zip(keys, shapes)
        ]

    return normal


def _cond(model):
    """`jax.lax.cond` whose branches may assign the model's variables (the
    policies' state): each branch runs in a `keras.StatelessScope` over
    every variable of the step, returns what it assigned, and the step
    assigns it after the conditional (a value assigned inside a branch
    must not leak out of it)."""

    def cond(predicate, true_fn, false_fn):
        optimizer = model.optimizer.variables if model.optimizer else []
        variables, seen = [], set()
        for v in (list(model.trainable_variables)
                  + list(model.non_trainable_variables)
                  + list(optimizer) + list(model.metrics_variables)):
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)

        def branch(fn):
            def run():
                current = [v.value for v in variables]
                with keras.StatelessScope(
                        state_mapping=list(zip(variables, current))) as scope:
                    out = fn()
                new = [scope.get_current_value(v) for v in variables]
                return out, [c if n is None else n
                             for n, c in zip(new, current)]

            return run

        out, values = jax.lax.cond(predicate, branch(true_fn),
                                   branch(false_fn))
        for v, value in zip(variables, values):
            v.assign(value)
        return out

    return cond


TRANSFORMS = functional.Transforms(
    _value_and_grad, _map_groups, _normal, _cond, _default_m,
    trace_once=jax.jit,
)

sam_gradients = functools.partial(
    functional.sam_gradients, transforms=TRANSFORMS
)


def apply_gradients(optimizer, grads, variables):
    """`optimizer.apply` as Keras' JAX trainer applies it, through
    `stateless_apply`: the stateful `apply` of a `LossScaleOptimizer`
    assigns inside a `jax.lax.cond`, whose values must not leave it."""
    new_variables, new_state = optimizer.stateless_apply(
        [v.value for v in optimizer.variables], grads,
        [v.value for v in variables])
    for variable, value in zip(variables, new_variables):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, new_state):
        variable.assign(value)


def whole_step_compiled(model) -> bool:
    """Keras compiles the whole step when `jit_compile=True`."""
    return model.jit_compile is True


def stateless_step(model, train_step):
    """`train_step(data) -> logs` as Keras' JAX trainer calls a step.

    Args:
        model: The model; its variables define the state's order.
        train_step: A function of the batch that assigns variables.

    Returns:
        `step(state, data) -> (logs, state)`.
    """

    def groups():
        optimizer = model.optimizer.variables if model.optimizer else []
        return (
            model.trainable_variables,
            model.non_trainable_variables,
            optimizer,
            model.metrics_variables,
        )

    @functools.wraps(train_step)
    def step(state, data):
        references = groups()
        mapping = [
            pair
            for variables, values in zip(references, state)
            for pair in zip(variables, values)
        ]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = train_step(data)
        new_state = []
        for variables, values in zip(references, state):
            current = [scope.get_current_value(v) for v in variables]
            new_state.append(
                [old if new is None else new
                 for new, old in zip(current, values)]
            )
        return logs, tuple(new_state)

    return step
