"""Old import path, kept working: see `keras_sam.core.groups` (m-groups)."""

from keras_sam.core.groups import LOOPED_BY_VECTORIZED_MAP  # noqa: F401
from keras_sam.core.groups import STRATEGIES  # noqa: F401
from keras_sam.core.groups import batch_size  # noqa: F401
from keras_sam.core.groups import check_m  # noqa: F401
from keras_sam.core.groups import map_groups  # noqa: F401
from keras_sam.core.groups import merge_groups  # noqa: F401
from keras_sam.core.groups import split_into_groups  # noqa: F401
