"""Old import path, kept working: see `keras_sam.noise.bootstrapping`."""

from keras_sam.noise.bootstrapping import Bootstrapped  # noqa: F401
from keras_sam.noise.bootstrapping import bootstrap  # noqa: F401
from keras_sam.noise.bootstrapping import reinitialize  # noqa: F401
from keras_sam.noise.bootstrapping import relabel  # noqa: F401
