"""The search space's pieces: rho grids and ranges, and KerasTuner itself.

KerasTuner is an optional dependency (`pip install "keras_sam[tuning]"`):
`import_keras_tuner` imports it on first use and names the extra when it
is missing, so importing keras_sam never needs it.
"""

import numpy as np

from keras_sam import _optional
from keras_sam.core.options import check_rho

PAPER_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""Foret et al.'s grid of rho values (section 3.1)."""

BAYESIAN_RHO_RANGE = (0.005, 1.0)
"""Default bounds of the log-uniform rho of `bayesian_search`."""


def import_keras_tuner():
    """Imports KerasTuner, or says which keras_sam extra installs it.

    Returns:
        The `keras_tuner` module.

    Raises:
        ImportError: If keras-tuner is not installed, naming the
            `keras_sam[tuning]` extra (keras-tuner and tensorboard).
    """
    return _optional.require(
        "keras_tuner",
        extra="tuning",
        feature="keras_sam's rho search (SAMHyperModel, grid_search, "
        "bayesian_search)",
    )


def default_objective():
    """Best-epoch validation accuracy, the searches' default score.

    Returns:
        `keras_tuner.Objective("val_accuracy", "max")`; KerasTuner keeps
        each trial's best epoch.
    """
    return import_keras_tuner().Objective("val_accuracy", "max")


def lazy_attribute(module: str, name: str):
    """`OBJECTIVE` of `module`, built on first use (it needs KerasTuner).

    Args:
        module: String, the name of the module asked (for the error).
        name: String, the attribute asked.

    Returns:
        `default_objective()` for "OBJECTIVE".

    Raises:
        AttributeError: For any other name.
    """
    if name == "OBJECTIVE":
        return default_objective()
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


def check_rho_values(
    rho_values, argument: str = "rho_values", example=PAPER_GRID
) -> tuple:
    """Validates a grid of rho values > 0 and returns a tuple of floats.

    Each value passes `keras_sam.core.options.check_rho`; 0 is refused too (a
    search over rho = 0 trains the base optimizer).
    """
    values = _grid(rho_values, argument, example)
    for value in values:
        check_rho(value)
    return values


def check_learning_rates(learning_rates, argument: str = "learning_rate"):
    """Validates a grid of learning rates > 0 and returns a tuple of floats.

    >>> check_learning_rates([0.1, 0.01])
    (0.1, 0.01)
    """
    return _grid(learning_rates, argument, example=(0.01, 0.1))


def _grid(values, argument: str, example) -> tuple:
    """A non-empty tuple of finite floats > 0, or a ValueError."""
    try:
        grid = tuple(np.ravel(np.asarray(values, "float64")).tolist())
    except (TypeError, ValueError):
        grid = ()
    if not grid or any(not np.isfinite(v) or v <= 0 for v in grid):
        raise ValueError(
            f"`{argument}` must be a non-empty sequence of numbers > 0, "
            f"e.g. {example}. Received: {argument}={values!r}"
        )
    return grid


def check_rho_range(rho_range, argument: str = "rho_range") -> tuple:
    """Validates `(min, max)` bounds of a log-uniform rho, 0 < min < max."""
    try:
        low, high = (float(v) for v in rho_range)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not (0 < low < high and np.isfinite(high)):
        raise ValueError(
            f"`{argument}` must be (min, max) with 0 < min < max: rho is "
            "searched on a log scale, so min must be positive, e.g. "
            f"{BAYESIAN_RHO_RANGE}. Received: {argument}={rho_range!r}"
        )
    return low, high
