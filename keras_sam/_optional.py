"""Optional dependencies: import them on use, naming the extra that adds them.

keras_sam's core needs only Keras, NumPy and one Keras backend: TensorFlow,
JAX or PyTorch. The parts that need more import their dependency through
`require`, which turns a missing package into an `ImportError` that names
the pip extra to install:

- `tuning`: keras-tuner and tensorboard (`SAMHyperModel`, `grid_search`,
  `bayesian_search`);
- `plots`: matplotlib (`keras_sam.diagnostics.plots`);
- `data`: scikit-learn (`keras_sam.datasets.load_digits`);
- `experiments`: the above plus tensorflow-datasets and absl-py (the
  `experiments/` studies and `tools/`, which are not part of the wheel).

TensorFlow itself is not an install requirement, so that a user who chose
`tensorflow-cpu` (or a vendor build), or another backend, does not get a
(second) TensorFlow from pip. `check_tensorflow` says what to install when
Keras is set to the TensorFlow backend and none is there. No keras_sam
module imports TensorFlow when it is imported: the tools that use it hold
a `LazyTensorFlow`, which imports it at first use. Those that need
TensorFlow installed but run on any backend (`tf.data` pipelines: `keras_sam.
noise.noisy_dataset`) call `import_tensorflow`; those that need the
TensorFlow backend itself (`tf.GradientTape`, `tf.function`, `tf.distribute`:
most of `keras_sam.diagnostics`) call `check_tensorflow_backend`, which
says, on another backend, to set `KERAS_BACKEND=tensorflow`.
"""

import importlib
import importlib.util
from types import ModuleType

# The pip distribution that provides each importable module, where the
# two names differ.
_DISTRIBUTIONS = {
    "absl": "absl-py",
    "keras_tuner": "keras-tuner",
    "sklearn": "scikit-learn",
    "tensorflow_datasets": "tensorflow-datasets",
}


def require(module: str, extra: str, feature: str = "") -> ModuleType:
    """Imports `module`, or explains which keras_sam extra installs it.

    Args:
        module: String, the dotted name to import, e.g. "matplotlib.figure".
        extra: String, the keras_sam extra that declares the package, e.g.
            "plots".
        feature: Optional string, what needs the module (e.g.
            "keras_sam.diagnostics.plots"); it is named in the error.

    Returns:
        The imported module.

    Raises:
        ImportError: If the module (or a package it needs) is not installed,
            naming the package and the `pip install "keras_sam[<extra>]"`
            that adds it.

    >>> require("math", extra="core").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        package = _DISTRIBUTIONS.get(top, top)
        user = f"{feature} needs" if feature else "This feature needs"
        raise ImportError(
            f"{user} `{package}` (module `{module}`), which is not "
            f"installed: {error}. Install it with "
            f'`pip install "keras_sam[{extra}]"` (or `pip install {package}`).'
        ) from error


_NO_TENSORFLOW = (
    "keras_sam runs on TensorFlow, JAX or PyTorch, and Keras is set to the "
    "TensorFlow backend, but no TensorFlow is installed. Install one wheel: "
    '`pip install "keras_sam[tensorflow]"` (GPU-capable), '
    '`pip install "keras_sam[tensorflow-cpu]"` (CPU only), or your '
    "platform's own TensorFlow build (2.16.1 or newer); or run Keras on "
    "another installed backend: set KERAS_BACKEND=jax or KERAS_BACKEND=torch."
)


def _missing_tensorflow(error: ImportError) -> bool:
    """Whether an `ImportError` says that TensorFlow is not installed (not
    that an installed one is broken, whose own error is then clearer)."""
    name = getattr(error, "name", None) or ""
    if name != "tensorflow" and not name.startswith("tensorflow."):
        return False
    try:
        return importlib.util.find_spec("tensorflow") is None
    except (ImportError, ValueError):
        return True


def check_tensorflow() -> None:
    """Raises a clear `ImportError` if Keras needs a TensorFlow that is absent.

    keras_sam runs on the TensorFlow, JAX or PyTorch backend of Keras and
    declares no TensorFlow requirement of its own (see the module
    docstring), so this check replaces pip's where it matters: when Keras
    is set to the TensorFlow backend (`KERAS_BACKEND`, or `backend` in
    `~/.keras/keras.json`; Keras' default). On another backend it asks
    nothing of TensorFlow.

    Raises:
        ImportError: If Keras' backend is TensorFlow and the `tensorflow`
            module cannot be found, naming the extras `keras_sam[tensorflow]`
            and `keras_sam[tensorflow-cpu]`, and the other backends.
    """
    try:
        import keras
    except ImportError as error:
        # On the TensorFlow backend, Keras imports TensorFlow on import.
        if _missing_tensorflow(error):
            raise ImportError(_NO_TENSORFLOW) from error
        raise
    if keras.backend.backend() != "tensorflow":
        return
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(_NO_TENSORFLOW)


def import_tensorflow(feature: str) -> ModuleType:
    """Imports TensorFlow for a feature that needs it on any Keras backend.

    Args:
        feature: String, what needs TensorFlow (e.g.
            "keras_sam.noise.noisy_dataset"); it is named in the error.

    Returns:
        The `tensorflow` module.

    Raises:
        ImportError: If TensorFlow is not installed, naming the extras that
            add it.
    """
    try:
        return importlib.import_module("tensorflow")
    except ImportError as error:
        if not _missing_tensorflow(error):
            raise
        raise ImportError(
            f"{feature} needs TensorFlow, which is not installed: {error}. "
            'Install it with `pip install "keras_sam[tensorflow-cpu]"` (or '
            '`"keras_sam[tensorflow]"`, GPU-capable); Keras may keep '
            "another backend."
        ) from error


def check_tensorflow_backend(feature: str, reason: str = "") -> None:
    """Raises a clear `RuntimeError` unless Keras runs on TensorFlow.

    Args:
        feature: String, what needs the TensorFlow backend (e.g.
            "keras_sam.diagnostics.m_sharpness"); it is named in the error.
        reason: Optional string, why (e.g. "it differentiates with
            tf.GradientTape").

    Raises:
        RuntimeError: If `keras.backend.backend()` is not "tensorflow",
            naming the backend in use and `KERAS_BACKEND=tensorflow`.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    why = f" ({reason})" if reason else ""
    raise RuntimeError(
        f"{feature} needs the TensorFlow backend of Keras{why}, but Keras "
        f"runs on the {backend!r} backend. Set KERAS_BACKEND=tensorflow "
        "before Keras is imported (with TensorFlow installed: "
        '`pip install "keras_sam[tensorflow-cpu]"`).'
    )


class LazyTensorFlow:
    """Stands for the `tensorflow` module, imported at its first use.

    A module that holds `tf = LazyTensorFlow("keras_sam.x")` imports without
    TensorFlow; the first `tf.<name>` imports it (through
    `import_tensorflow`, so a missing TensorFlow names the extras).

    Args:
        feature: String, the module or feature named if TensorFlow is
            missing.
    """

    def __init__(self, feature: str):
        self._feature = feature

    def __getattr__(self, name):
        if name.startswith("_"):  # introspection (copy, doctest, inspect)
            raise AttributeError(name)
        return getattr(import_tensorflow(self._feature), name)

    def __repr__(self):
        return f"<LazyTensorFlow for {self._feature}>"


# Runs on `import keras_sam`: keras_sam/__init__.py imports this module
# before any other keras_sam module.
check_tensorflow()
