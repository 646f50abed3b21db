"""Old import path, kept working: see `keras_sam.tuning.hypermodel`."""

from keras_sam.tuning import space
from keras_sam.tuning.hypermodel import SAMHyperModel  # noqa: F401
from keras_sam.tuning.space import BAYESIAN_RHO_RANGE  # noqa: F401
from keras_sam.tuning.space import PAPER_GRID  # noqa: F401
from keras_sam.tuning.space import check_rho_range  # noqa: F401
from keras_sam.tuning.space import check_rho_values  # noqa: F401
from keras_sam.tuning.space import default_objective  # noqa: F401
from keras_sam.tuning.space import import_keras_tuner  # noqa: F401


def __getattr__(name):  # PEP 562: `OBJECTIVE` stays lazy.
    return space.lazy_attribute(__name__, name)
