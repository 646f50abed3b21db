"""Regularised SGD: the cheap baseline of Baek et al. (2024), eq. 4.5.

Baek et al. show that, for deep networks under label noise, much of 1-SAM's
benefit comes from shrinking the last hidden activations z and the last
layer's weights v. Their baseline trains with plain SGD on

    L(w) + gamma_z * (1/N) sum_i ||z_i||_2 + gamma_v * ||v||_2^2,

which costs one forward and backward pass, like SGD.
"""

import keras

from keras import ops

from keras_sam import _keras


@keras.saving.register_keras_serializable(package="keras_sam")
class FeatureNorm(keras.regularizers.Regularizer):
    """gamma * sum_i ||z_i||_2 over a batch of activations z.

    Used as an activity regularizer, which Keras divides by the batch size,
    so the loss term is gamma times the mean Euclidean norm of a row.

    >>> import numpy as np
    >>> float(FeatureNorm(0.5)(np.array([[3.0, 4.0], [0.0, 0.0]])))
    2.5
    """

    def __init__(self, gamma: float):
        self.gamma = _check_gamma("gamma", gamma)

    def __call__(self, z):
        z = ops.reshape(z, (ops.shape(z)[0], -1))
        return self.gamma * ops.sum(ops.sqrt(ops.sum(ops.square(z), axis=1)))

    def get_config(self):
        return {"gamma": self.gamma}


def regularized_sgd_model(model, gamma_z: float, gamma_v: float):
    """Adds Baek et al.'s last-layer penalties to `model`, in place.

    The input of the model's last layer gets the activity penalty
    gamma_z * mean ||z||, and the last layer's kernel the L2 penalty
    gamma_v * ||v||^2. Train the returned model with any optimizer (plain
    SGD for the paper's baseline); the penalties are saved with it.

    Args:
        model: A functional or Sequential `keras.Model` whose last layer has
            a `kernel` (e.g. `Dense`).
        gamma_z: Float >= 0, weight of the mean activation norm.
        gamma_v: Float >= 0, weight of the squared last-layer weight norm.

    Returns:
        `model`, with the penalties attached.

    >>> import keras
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
    ...                         keras.layers.Dense(3)])
    >>> net = regularized_sgd_model(net, gamma_z=0.01, gamma_v=0.001)
    >>> len(net.losses)  # the weight penalty; the activity one needs data
    1

    References:
        Baek, Kolter and Raghunathan, "Why is SAM Robust to Label Noise?",
        ICLR 2024, section 4.3, equation 4.5.
    """
    gamma_z = _check_gamma("gamma_z", gamma_z)
    gamma_v = _check_gamma("gamma_v", gamma_v)
    head = model.layers[-1] if model.layers else None
    if getattr(head, "kernel", None) is None:
        raise ValueError(
            "`model`'s last layer must have a kernel (e.g. Dense), the "
            f"weights v of Baek et al. eq. 4.5. Received last layer: {head!r}"
        )
    try:
        feature_layer = _keras.layer_history(head.input)
    except (AttributeError, ValueError):
        raise ValueError(
            "`model` must be functional or Sequential, so that the input of "
            "its last layer (the features z) is known."
        ) from None
    feature_layer.activity_regularizer = FeatureNorm(gamma_z)
    head.kernel_regularizer = keras.regularizers.L2(gamma_v)
    head.kernel.regularizer = head.kernel_regularizer
    return model


def _check_gamma(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if not value >= 0:
        raise ValueError(
            f"`{name}` must be a number >= 0 (Baek et al. tune it on a grid "
            f"such as 0.001-0.1). Received: {name}={value!r}"
        )
    return value
