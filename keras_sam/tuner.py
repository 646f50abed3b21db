"""Old import path, kept working: see `keras_sam.tuning`."""

from keras_sam.tuning import space
from keras_sam.tuning.data import SearchData  # noqa: F401
from keras_sam.tuning.data import prepare_search_data  # noqa: F401
from keras_sam.tuning.hypermodel import SAMHyperModel  # noqa: F401
from keras_sam.tuning.search import SearchResult  # noqa: F401
from keras_sam.tuning.search import bayesian_search  # noqa: F401
from keras_sam.tuning.search import grid_search  # noqa: F401
from keras_sam.tuning.search import run_search  # noqa: F401
from keras_sam.tuning.space import BAYESIAN_RHO_RANGE  # noqa: F401
from keras_sam.tuning.space import PAPER_GRID  # noqa: F401


def __getattr__(name):  # PEP 562: `OBJECTIVE` needs KerasTuner: lazy.
    return space.lazy_attribute(__name__, name)
