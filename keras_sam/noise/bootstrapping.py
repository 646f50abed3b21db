"""Bootstrapping: retrain from scratch on a trained model's own predictions.

    first  = build(); first.fit(x, y)                # e.g. noisy labels
    y_hat  = argmax first.predict(x)                 # relabel the training set
    second = build(); second.fit(x, y_hat)           # fresh weights

Foret et al. (section 3.3) report that bootstrapped SAM is as robust to
label noise as methods built for it (MentorMix). Works for `SAMModel` and
for plain Keras models alike.
"""

from typing import Callable, NamedTuple, Optional, Union

import keras
import numpy as np


class Bootstrapped(NamedTuple):
    """Both models, both histories, and the labels the second trained on."""

    first: keras.Model
    second: keras.Model
    first_history: keras.callbacks.History
    second_history: keras.callbacks.History
    labels: np.ndarray


def reinitialize(model: keras.Model) -> keras.Model:
    """A copy of `model` with freshly initialised weights, compiled alike.

    The copy is rebuilt from `model.get_config()`, so every layer draws new
    initial weights (and a `SAMModel` gets its configured rho, m and p);
    it is compiled from `model.get_compile_config()` with a new optimizer.

    Args:
        model: A compiled `keras.Model` whose class supports
            `get_config`/`from_config` (functional, `Sequential`,
            `SAMModel`, or a subclass that implements them).

    Returns:
        A new, compiled, untrained model sharing no variable with `model`.

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> fresh = reinitialize(model)
    >>> bool((fresh.get_weights()[0] != model.get_weights()[0]).any())
    True
    """
    if not model.compiled:
        raise ValueError(
            f"Model {model.name!r} is not compiled: compile it (bootstrapping "
            "retrains a copy with the same loss, metrics and optimizer)."
        )
    try:
        fresh = type(model).from_config(model.get_config())
        compile_config = model.get_compile_config()
    except (NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(
            f"Cannot rebuild model {model.name!r} of type "
            f"{type(model).__name__} from its config ({error}). Pass a "
            "`build_fn` that returns a new compiled model instead."
        ) from error
    fresh.compile_from_config(compile_config)
    _check_independent(model, fresh)
    return fresh


def _check_independent(first, second):
    if second is first or {id(v) for v in first.weights} & {
        id(v) for v in second.weights
    }:
        raise ValueError(
            "The second model shares weights with the first: `build_fn` "
            "must create a new model (new layers) on every call."
        )


def relabel(model: keras.Model, x, like, batch_size: int = 256):
    """The model's predicted classes on `x`, in the format of `like`.

    Args:
        model: A classifier with one output of shape (batch, classes).
        x: Inputs.
        like: The original labels: integer indices of shape (n,) or (n, 1),
            or one-hot / soft labels of shape (n, classes).
        batch_size: Integer, the batch size for prediction.

    Returns:
        Predicted labels (argmax), with the shape and dtype of `like`
        (one-hot rows for one-hot `like`).
    """
    outputs = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise ValueError(
            "Bootstrapping needs a classifier with one output of shape "
            f"(batch, classes). Received outputs of shape {outputs.shape}."
        )
    predicted = outputs.argmax(axis=1)
    like = np.asarray(like)
    if like.ndim == 2 and like.shape[1] > 1:
        return np.eye(like.shape[1], dtype=like.dtype)[predicted]
    return predicted.astype(like.dtype).reshape(like.shape)


def _first_model(model) -> tuple:
    """`(first model, build function or None)` of `bootstrap`'s `model`."""
    if isinstance(model, keras.Model):
        return model, None
    if not callable(model):
        raise ValueError(
            "`model` must be a compiled keras.Model or a callable that "
            f"returns one. Received: {type(model).__name__}"
        )
    first = model()
    if not isinstance(first, keras.Model):
        raise ValueError(
            "`build_fn` must return a compiled keras.Model. It "
            f"returned {type(first).__name__}."
        )
    return first, model


def bootstrap(
    model: Union[keras.Model, Callable[[], keras.Model]], x, y,
    predict_batch_size: int = 256, retrain_kwargs: Optional[dict] = None,
    **fit_kwargs,
) -> Bootstrapped:
    """Trains, relabels the training set with the predictions, retrains.

    Args:
        model: A compiled `keras.Model` (trained in place, then re-created
            with fresh weights by `reinitialize`), or a `build_fn`: a
            callable with no argument that returns a new compiled model
            (called twice).
        x: Training inputs (arrays; the same inputs are relabelled).
        y: Training labels (e.g. noisy): integer indices or one-hot.
        predict_batch_size: Integer, batch size for relabelling.
        retrain_kwargs: Optional dict of `fit` arguments that override
            `fit_kwargs` for the second training (e.g. other callbacks).
        **fit_kwargs: Arguments of `fit` for both trainings (`epochs`,
            `batch_size`, `validation_data`, `callbacks`, ...). Callbacks
            are re-bound to the second model: use callbacks that reset in
            `on_train_begin`, as Keras' and keras_sam's do.

    Returns:
        `Bootstrapped(first, second, first_history, second_history,
        labels)`, where `labels` are the predictions the second model
        trained on.

    >>> import keras, keras_sam, numpy as np
    >>> def build():
    ...     inputs = keras.Input((4,))
    ...     model = keras_sam.SAMModel(inputs, keras.layers.Dense(3)(inputs))
    ...     model.compile(optimizer="sgd", loss=keras.losses.
    ...         SparseCategoricalCrossentropy(from_logits=True))
    ...     return model
    >>> x, y = np.random.rand(12, 4), np.arange(12) % 3
    >>> result = bootstrap(build, x, y, epochs=1, verbose=0)
    >>> result.labels.shape, result.second is result.first
    ((12,), False)

    References:
        Foret et al. 2021, section 3.3 and table 4 ("Bootstrap + SAM");
        Alexandru, "Sharpness-aware minimisation and label noise",
        section 4.3.
    """
    first, build = _first_model(model)
    if len(x) != len(y):
        raise ValueError(
            f"`x` and `y` must have the same length. Received {len(x)} "
            f"inputs and {len(y)} labels."
        )
    first_history = first.fit(x, y, **fit_kwargs)
    labels = relabel(first, x, like=y, batch_size=predict_batch_size)
    second = reinitialize(first) if build is None else build()
    _check_independent(first, second)
    second_history = second.fit(
        x, labels, **{**fit_kwargs, **(retrain_kwargs or {})}
    )
    return Bootstrapped(first, second, first_history, second_history, labels)
