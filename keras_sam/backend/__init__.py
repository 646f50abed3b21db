"""Each Keras backend's half of SAM's step.

`keras_sam/core` holds what is backend-neutral (the options, the
perturbation pipeline, the algorithm over passes, the cheap-SAM policy's
decisions), written in `keras.ops`. A folder here per backend holds the
rest, as Keras splits `keras/src/backend/*/trainer.py` from the model: one
side-effect-free pass with its gradient, the map over m-groups, the
conditional step, the replica reduction and how state updates are
committed.

- `tensorflow/`: the full step (tf.distribute replicas, every option);
- `jax/`, `torch/`: the function transforms (`value_and_grad`, `vmap`,
  random draws) that `functional.py`, the step for backends whose
  gradients are transforms of functions, runs on; `jax/` also commits a
  step's state in Keras' stateless JAX trainer;
- `state.py`: the state variables a pass may change (a leaf module).

`step_module()` is the current backend's step; `check_options` refuses, at
construction, an option the current backend's step does not have.
"""

import importlib

import keras

BACKENDS = ("tensorflow", "jax", "torch")

# Options only the TensorFlow step has, with the value that switches each
# off: averaging across tf.distribute replicas.
TENSORFLOW_ONLY = {"sync_moving_statistics": False}


def name() -> str:
    """The Keras backend SAM runs on; raises on one it does not know."""
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise ValueError(
            f"keras_sam runs on the Keras backends {', '.join(BACKENDS)}; "
            f"this process uses KERAS_BACKEND={backend!r}. Set "
            "KERAS_BACKEND to one of them before importing keras."
        )
    return backend


def step_module():
    """The current backend's step module (imported on first use)."""
    return importlib.import_module(f"keras_sam.backend.{name()}.step")


def check_options(options) -> None:
    """Refuses options the current backend's step does not have.

    Raises:
        ValueError: naming the option, the backend and the fix.
    """
    backend = name()
    if backend == "tensorflow":
        return
    refused = {
        key: getattr(options, key)
        for key, off in TENSORFLOW_ONLY.items()
        if getattr(options, key) != off
    }
    if refused:
        settings = ", ".join(f"{k}={v!r}" for k, v in refused.items())
        raise ValueError(
            f"{settings}: not available on the {backend} backend (it "
            "averages BatchNorm statistics across tf.distribute replicas). "
            "Use KERAS_BACKEND=tensorflow, or leave the option at its "
            "default."
        )
