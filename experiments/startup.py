"""A quiet TensorFlow start-up for the command-line studies.

Importing TensorFlow 2.21 and initialising its devices prints C++ log lines
before its logging is set up, so `TF_CPP_MIN_LOG_LEVEL` cannot hide them
(tensorflow/tensorflow#100442): oneDNN notices and, on a CPU machine,
`E0000 ... failed call to cuInit`, which a newcomer reads as a failure.
`quiet_tensorflow_startup` runs that start-up with the process's stderr
(file descriptor 2) sent to /dev/null, then restores it: every warning and
error after start-up, and any exception raised by the import itself, still
shows.
"""

import contextlib
import importlib.util
import os
import sys


@contextlib.contextmanager
def _stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow_startup():
    """Imports TensorFlow and lists its devices without start-up lines;
    does nothing once TensorFlow is imported (its lines are printed).

    On the JAX backend (`KERAS_BACKEND=jax`) JAX's device discovery is
    quieted the same way (its INFO line about a missing TPU library). On
    JAX or PyTorch without TensorFlow installed it imports nothing more:
    the studies' tf.data pipelines need TensorFlow, the models and tools
    on those backends do not.
    """
    if os.environ.get("KERAS_BACKEND") == "jax" and "jax" not in sys.modules:
        with _stderr_silenced():
            try:
                import jax

                jax.devices()
            except Exception:  # noqa: BLE001 - raised again, below
                pass
        import jax  # noqa: F401 - a failed import fails here, loudly
    if sys.modules.get("tensorflow") is not None:
        return
    if (os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow"
            and importlib.util.find_spec("tensorflow") is None):
        return  # JAX or PyTorch alone: the tools run without TensorFlow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_silenced():
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except Exception:  # noqa: BLE001 - raised again, audibly, below
            pass
    import tensorflow  # noqa: F401 - a failed import fails here, loudly
