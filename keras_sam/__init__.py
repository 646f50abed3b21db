"""keras_sam: Sharpness-Aware Minimization for Keras 3 on TensorFlow."""

from keras_sam.model import SAMModel

__version__ = "0.1.0"

__all__ = [
    "SAMModel",
]
