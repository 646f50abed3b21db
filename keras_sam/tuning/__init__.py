"""Tuning rho (and m, the learning rate, a rho schedule) with KerasTuner.

`space` holds the search space's pieces and imports KerasTuner on use,
`trials` what each trial keeps of the user's model (compile arguments, SAM
settings), `hypermodel` the `SAMHyperModel` around any Keras model, `data`
the clean validation split a search scores on, and `search` the one runner
with the paper's grid and a Bayesian search as thin wrappers. KerasTuner
is the `tuning` extra; importing this package does not need it.
"""

from keras_sam.tuning import space
from keras_sam.tuning.data import SearchData
from keras_sam.tuning.data import prepare_search_data
from keras_sam.tuning.hypermodel import SAMHyperModel
from keras_sam.tuning.search import SearchResult
from keras_sam.tuning.search import bayesian_search
from keras_sam.tuning.search import grid_search
from keras_sam.tuning.search import run_search
from keras_sam.tuning.space import BAYESIAN_RHO_RANGE
from keras_sam.tuning.space import PAPER_GRID

__all__ = [
    "BAYESIAN_RHO_RANGE",
    "PAPER_GRID",
    "SAMHyperModel",
    "SearchData",
    "SearchResult",
    "bayesian_search",
    "grid_search",
    "prepare_search_data",
    "run_search",
]


def __getattr__(name):  # PEP 562: `OBJECTIVE` needs KerasTuner: lazy.
    return space.lazy_attribute(__name__, name)
