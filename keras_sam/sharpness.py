"""Old import path, kept working: see `keras_sam.diagnostics.sharpness`."""

from keras_sam.diagnostics.sharpness import SharpnessEstimate  # noqa: F401
from keras_sam.diagnostics.sharpness import m_sharpness  # noqa: F401
from keras_sam.perturbation import project  # noqa: F401
