"""keras_sam: Sharpness-Aware Minimization for Keras 3 (TF, JAX, PyTorch).

The folder tree is the design, one layer per folder:

- the model: `model.py` (`SAMModel`, the Keras integration: construction,
  rho, config, `from_model`), `model_classes.py`, `sam_state.py`;
- the step, backend-neutral: `core/` (options, the perturbation pipeline
  of eq. 2, the algorithm over passes, the cheap-SAM policies), in
  `keras.ops`;
- each backend's half of the step: `backend/tensorflow/` (the pass without
  side effects, m-groups, exact 1-SAM, replica statistics), and
  `backend/functional.py` with `backend/jax/` and `backend/torch/` (the
  step where gradients are function transforms);
- training aids: `schedules.py` (rho schedules) and `callbacks/`;
- label noise and bootstrapping: `noise/`;
- tuning rho with KerasTuner: `tuning/` (the `tuning` extra);
- diagnostics: `diagnostics/` (Hessian, sharpness, landscapes, plots), all
  on one stateless-loss helper (backend-neutral; the diagnostics on it need
  the TensorFlow backend);
- distribution: `distribution.py` (tf.distribute, multi-worker; a no-op off
  the TensorFlow backend);
- `_keras.py`: the one place for private Keras API.
`regularization.py` is Baek et al.'s regularised-SGD baseline, `datasets.py`
the docs' example data.
"""

# First: on the TensorFlow backend, says which TensorFlow to install when
# none is (see _optional). No keras_sam module imports TensorFlow on import.
from keras_sam import _optional  # noqa: F401
from keras_sam import callbacks
from keras_sam import datasets
from keras_sam import diagnostics
from keras_sam import noise
from keras_sam import regularization
from keras_sam import schedules
from keras_sam import tuning
from keras_sam.callbacks import NoiseMonitor
from keras_sam.callbacks import RhoScheduler
from keras_sam.callbacks import SharpnessLogger
from keras_sam.diagnostics import hessian_vector_product
from keras_sam.diagnostics import hutchinson_trace
from keras_sam.diagnostics import interpolate
from keras_sam.diagnostics import m_sharpness
from keras_sam.diagnostics import random_slice_1d
from keras_sam.diagnostics import random_slice_2d
from keras_sam.diagnostics import top_hessian_eigenvalues
from keras_sam.model import SAMModel
from keras_sam.regularization import regularized_sgd_model
from keras_sam.tuning import SAMHyperModel
from keras_sam.tuning import bayesian_search
from keras_sam.tuning import grid_search

__version__ = "0.1.0"

__all__ = [
    "NoiseMonitor",
    "RhoScheduler",
    "SAMHyperModel",
    "SAMModel",
    "SharpnessLogger",
    "bayesian_search",
    "callbacks",
    "datasets",
    "diagnostics",
    "grid_search",
    "hessian_vector_product",
    "hutchinson_trace",
    "interpolate",
    "m_sharpness",
    "noise",
    "random_slice_1d",
    "random_slice_2d",
    "regularization",
    "regularized_sgd_model",
    "schedules",
    "top_hessian_eigenvalues",
    "tuning",
]
