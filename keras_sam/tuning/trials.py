"""What a tuning trial keeps of the user's model: its compile and SAM setup.

A search varies only what its space names (rho; optionally m, the learning
rate, a rho schedule). Everything else about how the user trains comes
from the user's own model:

- `compile_arguments` reads the arguments a model was compiled with
  (optimizer, loss, metrics, loss weights, ...), and `fresh_compile_kwargs`
  replays them for a trial, with a new optimizer and new metrics built
  from their configs, so that no state leaks from one trial to the next;
- `sam_config` reads rho and every option of a `SAMModel`;
- `plain_graph` and `plain_clone` give a model's layers without SAM,
  shared or copied with new weights.
"""

import warnings
from typing import Any, Optional

import keras

from keras_sam import _keras

DEFAULT_OPTIMIZER = "sgd"
"""The optimizer of trials whose model and hypermodel name none."""

DEFAULT_METRICS = ("accuracy",)
"""The metrics of trials whose model and hypermodel name none."""


def crossentropy(y_true, y_pred):
    """Cross-entropy for integer labels or one-hot labels, told by shape.

    The default loss of a search: labels with the rank and the last
    dimension of the (softmax) predictions are one-hot and get
    `categorical_crossentropy`; other labels are class indices and get
    `sparse_categorical_crossentropy`.

    Args:
        y_true: Integer labels, `(batch,)` or `(batch, 1)`, or one-hot
            labels, `(batch, classes)`.
        y_pred: Probabilities, `(batch, classes)`.

    Returns:
        The per-example losses, `(batch,)`.

    >>> import numpy as np
    >>> p = np.array([[0.25, 0.75]], "float32")
    >>> sparse = crossentropy(np.array([1]), p)
    >>> one_hot = crossentropy(np.array([[0.0, 1.0]], "float32"), p)
    >>> bool(np.allclose(sparse, one_hot))
    True
    """
    y_true = keras.ops.convert_to_tensor(y_true)
    classes = y_pred.shape[-1]
    if (
        len(y_true.shape) == len(y_pred.shape)
        and y_true.shape[-1] == classes
        and classes != 1
    ):
        return keras.losses.categorical_crossentropy(y_true, y_pred)
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


def compile_arguments(model) -> Optional[dict]:
    """The arguments of `model`'s last `compile` call, or None if none.

    Args:
        model: A `keras.Model`.

    Returns:
        A dict of `Model.compile` keyword arguments, holding the objects
        the user passed (the optimizer itself, not a loss-scale wrapper),
        or None if `model` is not compiled.
    """
    if not getattr(model, "compiled", False):
        return None
    stored = _keras.compile_arguments(model)
    if stored is not None:
        return stored
    warnings.warn(
        f"Could not read how model {model.name!r} was compiled beyond its "
        "optimizer and loss: its trials use the hypermodel's metrics. Pass "
        "`metrics=` (and other compile arguments) to SAMHyperModel to set "
        "them.",
        stacklevel=2,
    )
    return {"optimizer": model.optimizer, "loss": model.loss}


def fresh_compile_kwargs(
    arguments: dict, learning_rate: Optional[float] = None
) -> dict:
    """`Model.compile` arguments for one trial, with no state shared.

    Args:
        arguments: Dict of `Model.compile` arguments. A None (or missing)
            optimizer, loss or metrics gets the search's default: "sgd",
            `crossentropy` and `["accuracy"]`.
        learning_rate: Optional float that replaces the optimizer's
            learning rate (or learning-rate schedule).

    Returns:
        A dict of `Model.compile` arguments with a new optimizer (same
        class and config) and new metric objects.
    """
    kwargs = dict(arguments)
    defaults = {
        "optimizer": DEFAULT_OPTIMIZER,
        "loss": crossentropy,
        "metrics": list(DEFAULT_METRICS),
    }
    for name, default in defaults.items():
        if kwargs.get(name) is None:
            kwargs[name] = default
    kwargs["optimizer"] = fresh_optimizer(kwargs["optimizer"], learning_rate)
    for name in ("metrics", "weighted_metrics"):
        if kwargs.get(name) is not None:
            kwargs[name] = keras.tree.map_structure(_fresh_metric, kwargs[name])
    return kwargs


def fresh_optimizer(optimizer: Any, learning_rate: Optional[float] = None):
    """A new optimizer of `optimizer`'s class and config.

    Args:
        optimizer: A Keras optimizer, its name or its serialized config.
        learning_rate: Optional float replacing the learning rate.

    Returns:
        A new `keras.optimizers.Optimizer`, `optimizer.__class__` built
        with `from_config(optimizer.get_config())`: the user's class
        (custom ones included) and every setting, with no slots or steps.
    """
    if isinstance(optimizer, (str, dict)):
        optimizer = keras.optimizers.get(optimizer)
    config = optimizer.get_config()
    if learning_rate is not None:
        config["learning_rate"] = float(learning_rate)
    return optimizer.__class__.from_config(config)


def _fresh_metric(metric):
    """A new metric object of `metric`'s class and config; others as is."""
    if isinstance(metric, keras.metrics.Metric):
        return metric.__class__.from_config(metric.get_config())
    return metric


def sam_config(model) -> dict:
    """Rho and every SAM option of a `SAMModel`.

    Args:
        model: A `keras_sam.SAMModel`.

    Returns:
        `{"rho": float, **options}`: `model.get_sam_config()` where the
        model has it, else rho's current value and `model.sam_options`.
    """
    get_sam_config = getattr(model, "get_sam_config", None)
    if get_sam_config is not None:
        return dict(get_sam_config())
    return {
        "rho": float(model.rho.numpy()),
        **model.sam_options.get_config(),
    }


def plain_graph(model) -> keras.Model:
    """The plain Keras model on the layers of a functional `SAMModel`.

    Args:
        model: A `keras.Model`.

    Returns:
        `keras.Model(model.inputs, model.outputs)` (same layers, no SAM)
        for a `SAMModel` with a graph; `model` itself otherwise.
    """
    if getattr(model, "sam_options", None) is None:
        return model
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        return model
    return keras.Model(inputs, outputs, name=model.name)


def plain_clone(model) -> keras.Model:
    """A copy of `model`'s layers with new weights, as a plain Keras model.

    Args:
        model: A `keras.Model`; a functional `SAMModel` is cloned through
            its graph (`plain_graph`), since `keras.models.clone_model`
            does not know SAM's arguments.

    Returns:
        A new model from `keras.models.clone_model`: same architecture,
        freshly initialised weights, not compiled.
    """
    return keras.models.clone_model(plain_graph(model))
