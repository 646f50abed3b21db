"""keras_sam: Sharpness-Aware Minimization for Keras 3 on TensorFlow."""

# First: says which TensorFlow to install when none is (see _optional).
from keras_sam import _optional  # noqa: F401
from keras_sam import bootstrap
from keras_sam import callbacks
from keras_sam import datasets
from keras_sam import landscape
from keras_sam import noise
from keras_sam import regularization
from keras_sam import schedules
from keras_sam.callbacks import NoiseMonitor
from keras_sam.callbacks import RhoScheduler
from keras_sam.callbacks import SharpnessLogger
from keras_sam.hessian import hessian_vector_product
from keras_sam.hessian import hutchinson_trace
from keras_sam.hessian import top_hessian_eigenvalues
from keras_sam.hypermodel import SAMHyperModel
from keras_sam.landscape import interpolate
from keras_sam.landscape import random_slice_1d
from keras_sam.landscape import random_slice_2d
from keras_sam.model import SAMModel
from keras_sam.regularization import regularized_sgd_model
from keras_sam.sharpness import m_sharpness
from keras_sam.tuner import bayesian_search
from keras_sam.tuner import grid_search

__version__ = "0.1.0"

__all__ = [
    "NoiseMonitor",
    "RhoScheduler",
    "SAMHyperModel",
    "SAMModel",
    "SharpnessLogger",
    "bayesian_search",
    "bootstrap",
    "callbacks",
    "datasets",
    "grid_search",
    "hessian_vector_product",
    "hutchinson_trace",
    "interpolate",
    "landscape",
    "m_sharpness",
    "noise",
    "random_slice_1d",
    "random_slice_2d",
    "regularization",
    "regularized_sgd_model",
    "schedules",
    "top_hessian_eigenvalues",
]
