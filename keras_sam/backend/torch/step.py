"""The PyTorch half of SAM's step.

Keras' torch trainer runs `train_step(data)` eagerly on one device. The
gradient is `torch.func.grad_and_value` of a side-effect-free pass
(`keras_sam.backend.functional`), which, as a function transform, ignores
the `torch.no_grad()` that the whole step runs under (`wrap_train_step`):
the optimizer and the state updates assign in place without autograd.
m-groups run one after another (eager PyTorch gains little from
`torch.func.vmap`, which not every Keras layer supports).
"""

import functools

import keras
import torch

from keras_sam.backend import functional


def _value_and_grad(f):
    grad_fn = torch.func.grad_and_value(f, has_aux=True)

    def value_and_grad(weights):
        grads, (value, aux) = grad_fn(weights)
        return (value, aux), grads

    return value_and_grad


def _map_groups(fn, groups):
    count = functional.batch_size(groups)
    outputs = [
        fn(keras.tree.map_structure(lambda t: t[i], groups))
        for i in range(count)
    ]
    return keras.tree.map_structure(lambda *t: torch.stack(t), *outputs)


def _normal(model, options):
    """Draws from the seed, the step and the kind: the same in both
    passes of a step, fresh at the next."""

    def normal(shapes, kind):
        step_index = int(model.optimizer.iterations.value)
        if kind == "mask":
            step_index = step_index // options.mask_update_every
        generator = torch.Generator(device="cpu")
        kind_index = 1 if kind == "mask" else 0
        generator.manual_seed(
            (options.seed * 1_000_003 + step_index) * 2 + kind_index
        )
        device = keras.ops.convert_to_tensor(0.0).device
        return [
            torch.randn(tuple(s), generator=generator).to(device)
            for s in shapes
        ]

    return normal


def _get_random_state():
    cuda = None
    if torch.cuda.is_available():
        cuda = torch.cuda.get_rng_state_all()
    return torch.get_rng_state(), cuda


def _set_random_state(state):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


# Keras' torch Dropout without a seed draws from torch's global generator
# (`torch.nn.functional.dropout`): both passes must see the same masks.
def _cond(model):
    """Eager: the branch the predicate picks runs, the other does not."""
    del model
    return lambda predicate, true_fn, false_fn: (
        true_fn() if bool(predicate) else false_fn())


TRANSFORMS = functional.Transforms(
    _value_and_grad, _map_groups, _normal, _cond,
    global_random=(_get_random_state, _set_random_state),
)

sam_gradients = functools.partial(
    functional.sam_gradients, transforms=TRANSFORMS
)


def stateless_step(model, train_step):
    """The step as Keras' torch trainer calls it, under `torch.no_grad()`
    (SAM's gradients are function transforms, which ignore it)."""
    del model

    @functools.wraps(train_step)
    def step(data):
        with torch.no_grad():
            return train_step(data)

    return step
