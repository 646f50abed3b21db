"""Old import path, kept working: see `keras_sam.diagnostics.landscape`."""

from keras_sam.diagnostics.landscape import FILTER_EPSILON  # noqa: F401
from keras_sam.diagnostics.landscape import Curve  # noqa: F401
from keras_sam.diagnostics.landscape import Surface  # noqa: F401
from keras_sam.diagnostics.landscape import filter_normalized_direction  # noqa: F401
from keras_sam.diagnostics.landscape import interpolate  # noqa: F401
from keras_sam.diagnostics.landscape import random_slice_1d  # noqa: F401
from keras_sam.diagnostics.landscape import random_slice_2d  # noqa: F401
