"""The PyTorch half of SAM's step.

Keras' torch trainer runs `train_step(data)` eagerly on one device. The
gradient is reverse-mode autograd of a side-effect-free pass
(`keras_sam.backend.functional`), with gradients enabled for that pass
only: the whole step runs under `torch.no_grad()` (`stateless_step`), so
the optimizer and the state updates assign in place without autograd.
m-groups run one after another (eager PyTorch gains little from
`torch.func.vmap`, which not every Keras layer supports).
"""

import contextlib
import functools

import keras
import torch
import torch.nn.attention

from keras_sam.backend import functional


def _value_and_grad(f):
    """Reverse-mode autograd, as Keras' torch trainer takes its gradient
    (`torch.func.grad_and_value` gives the same numbers, but with its
    per-op dispatch SAM cost 2.4-3.2x SGD on a ResNet-20 at batch 32).

    At the top level (the step runs under `torch.no_grad()`) the weights
    become fresh leaves and what the pass returns is detached. Inside
    another differentiation (`second_order` differentiates through the
    ascent: gradients are enabled there and the weights require them) the
    gradient is taken through the weights with `create_graph=True`.
    Keras' trainable variables always require gradients, so that alone
    does not tell the two apart.
    """

    def value_and_grad(weights):
        flat, pack = _flatten(weights)
        nested = torch.is_grad_enabled() and any(
            w.requires_grad for w in flat)
        with torch.enable_grad():
            leaves = flat if nested else [
                w.detach().requires_grad_(True) for w in flat]
            value, aux = f(pack(leaves))
            grads = torch.autograd.grad(
                value, leaves, allow_unused=True, create_graph=nested)
        grads = [torch.zeros_like(w) if g is None else g
                 for g, w in zip(grads, leaves)]
        if not nested:
            value, aux = keras.tree.map_structure(
                lambda t: t.detach() if torch.is_tensor(t) else t,
                (value, aux))
        return (value, aux), pack(grads)

    return value_and_grad


def _flatten(weights):
    """`(leaves, pack)`: the tensors of `weights` and how to rebuild it.

    A list or tuple of tensors (the weights of a step) is taken as it is:
    Keras 3.15's torch `keras.tree.flatten` and `pack_sequence_as` leave a
    reference cycle that holds the structure they were given
    (keras-team/keras#23110, fixed after 3.15.1), so each step's perturbed
    weights stayed allocated until Python's cyclic garbage collector ran:
    about one copy of the weights per step piled up on a GPU between
    collections.
    """
    if type(weights) in (list, tuple) and all(
            torch.is_tensor(w) for w in weights):
        return list(weights), type(weights)
    return (keras.tree.flatten(weights),
            lambda leaves: keras.tree.pack_sequence_as(weights, leaves))


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


def apply_gradients(optimizer, grads, variables):
    """`optimizer.apply`, as Keras' own step applies gradients here."""
    optimizer.apply(grads, variables)


def whole_step_compiled(model) -> bool:
    """Keras compiles the whole step when `jit_compile=True`."""
    return model.jit_compile is True


def stateless_step(model, train_step):
    """The step as Keras' torch trainer calls it, under `torch.no_grad()`
    (SAM's gradient passes enable gradients for themselves only).

    `second_order` differentiates the gradient pass again, and PyTorch's
    fused attention kernels (flash, memory-efficient) have no double
    backward (pytorch/pytorch#116350): there the step runs
    `scaled_dot_product_attention` on its math kernel, which has one."""
    second_order = model.sam_options.second_order

    @functools.wraps(train_step)
    def step(data):
        kernel = (
            torch.nn.attention.sdpa_kernel(
                torch.nn.attention.SDPBackend.MATH)
            if second_order else contextlib.nullcontext()
        )
        with torch.no_grad(), kernel:
            return train_step(data)

    return step
