"""Old import path, kept working: see `keras_sam.diagnostics.plots`."""

from keras_sam.diagnostics.plots import plot_contour  # noqa: F401
from keras_sam.diagnostics.plots import plot_curves  # noqa: F401
from keras_sam.diagnostics.plots import plot_surface  # noqa: F401
from keras_sam.diagnostics.plots import save_curves  # noqa: F401
from keras_sam.diagnostics.plots import save_surface  # noqa: F401
