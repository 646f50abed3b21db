"""Label noise and bootstrapping: the robustness studies' library side.

`labels` draws synthetic noise (symmetric, class-conditional), `files`
reads human noise (CIFAR-10N), `data` holds out a clean validation split
and applies noise to `tf.data` pipelines, `bootstrapping` retrains on a
trained model's own predictions. Every noise function returns
`NoisyLabels` (labels, clean labels, `is_noisy`), which
`keras_sam.callbacks.NoiseMonitor` reads.
"""

from keras_sam.noise.bootstrapping import Bootstrapped
from keras_sam.noise.bootstrapping import bootstrap
from keras_sam.noise.bootstrapping import reinitialize
from keras_sam.noise.bootstrapping import relabel
from keras_sam.noise.data import Split
from keras_sam.noise.data import clean_validation_split
from keras_sam.noise.data import noisy_dataset
from keras_sam.noise.files import labels_from_file
from keras_sam.noise.labels import NoisyLabels
from keras_sam.noise.labels import check_transition_matrix
from keras_sam.noise.labels import pair_transition
from keras_sam.noise.labels import symmetric_noise
from keras_sam.noise.labels import symmetric_transition
from keras_sam.noise.labels import transition_noise

__all__ = [
    "Bootstrapped",
    "NoisyLabels",
    "Split",
    "bootstrap",
    "check_transition_matrix",
    "clean_validation_split",
    "labels_from_file",
    "noisy_dataset",
    "pair_transition",
    "reinitialize",
    "relabel",
    "symmetric_noise",
    "symmetric_transition",
    "transition_noise",
]
