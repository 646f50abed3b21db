"""Optional dependencies: import them on use, naming the extra that adds them.

keras_sam's core needs only Keras, NumPy and a TensorFlow wheel. The parts
that need more import their dependency through `require`, which turns a
missing package into an `ImportError` that names the pip extra to install:

- `tuning`: keras-tuner and tensorboard (`SAMHyperModel`, `grid_search`,
  `bayesian_search`);
- `plots`: matplotlib (`keras_sam.diagnostics.plots`);
- `data`: scikit-learn (`keras_sam.datasets.load_digits`);
- `experiments`: the above plus tensorflow-datasets and absl-py (the
  `experiments/` studies and `tools/`, which are not part of the wheel).

TensorFlow itself is not an install requirement, so that a user who chose
`tensorflow-cpu` (or a vendor build) does not get a second TensorFlow from
pip; `check_tensorflow` says what to install when none is there.
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


def check_tensorflow() -> None:
    """Raises a clear `ImportError` if no TensorFlow wheel is installed.

    keras_sam declares no TensorFlow requirement of its own (see the module
    docstring), so this check replaces pip's.

    Raises:
        ImportError: If the `tensorflow` module cannot be found, naming the
            extras `keras_sam[tensorflow]` and `keras_sam[tensorflow-cpu]`.
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(
            "keras_sam runs on TensorFlow, and no TensorFlow is installed. "
            'Install one wheel: `pip install "keras_sam[tensorflow]"` '
            '(GPU-capable), `pip install "keras_sam[tensorflow-cpu]"` '
            "(CPU only), or your platform's own TensorFlow build (2.16.1 or "
            "newer)."
        )


# Runs on `import keras_sam`: keras_sam/__init__.py imports this module
# before any module that imports Keras or TensorFlow.
check_tensorflow()
