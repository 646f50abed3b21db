"""Diagnostics of a trained model's loss surface, all stateless.

`stateless_loss` is the one setup they share: the loss as a pure function
of weight values over a whole data set. On it: `hessian` (Hessian-vector
products, Lanczos eigenvalues, Hutchinson's trace), `sharpness`
(m-sharpness), `landscape` (interpolations and random slices) and `plots`
(figures and files of landscapes; needs the `plots` extra, so it is not
imported here).

The package imports on every Keras backend. `StatelessLoss` runs on any;
the diagnostics built on it (`tf.data`, `tf.GradientTape`, `tf.function`)
need the TensorFlow backend and, on another, raise a `RuntimeError` that
says to set `KERAS_BACKEND=tensorflow`.
"""

from keras_sam.diagnostics.hessian import hessian_vector_product
from keras_sam.diagnostics.hessian import hutchinson_trace
from keras_sam.diagnostics.hessian import top_hessian_eigenvalues
from keras_sam.diagnostics.landscape import interpolate
from keras_sam.diagnostics.landscape import random_slice_1d
from keras_sam.diagnostics.landscape import random_slice_2d
from keras_sam.diagnostics.sharpness import m_sharpness
from keras_sam.diagnostics.stateless_loss import StatelessLoss
from keras_sam.diagnostics.stateless_loss import evaluate_loss

__all__ = [
    "StatelessLoss",
    "evaluate_loss",
    "hessian_vector_product",
    "hutchinson_trace",
    "interpolate",
    "m_sharpness",
    "random_slice_1d",
    "random_slice_2d",
    "top_hessian_eigenvalues",
]
