"""The state a forward pass may change: what SAM's step commits.

A leaf module shared by every backend's step: the TensorFlow step, its
exact 1-SAM path (`per_example.py`) and the functional step all collect
the state a pass records in its
`keras.StatelessScope`, in the same order, so that their updates index
into one list. Also which of that state is BatchNormalization's moving
statistics (averaged over groups and, if asked, replicas), and the one
check of groups against the model's layers
(1-SAM and BatchNormalization).
"""

import keras

from keras_sam import _keras


def state_variables(model) -> list:
    """The variables a forward pass may assign: the model's non-trainable
    state (statistics, seeds), its metrics, and the global seed generator
    behind unseeded `keras.random` calls."""
    candidates = list(model.non_trainable_variables) + list(
        model.metrics_variables
    )
    generator = _keras.existing_global_seed_generator()
    if generator is not None:
        candidates.append(generator.state)
    seen, unique = set(), []
    for v in candidates:
        if id(v) not in seen:
            seen.add(id(v))
            unique.append(v)
    return unique


def moving_statistics(model) -> set:
    """ids of BatchNormalization's moving means and variances: averages
    of a batch's statistics, so groups' (and replicas') updates to them
    are averaged, not added."""
    return {
        id(v)
        for layer in _keras.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    }


def check_groups_of_one(model, m) -> None:
    """Refuses m=1 (1-SAM) on a model with BatchNormalization.

    Raises:
        ValueError: naming the layer and the fix (a batch of one example).
    """
    if m != 1:
        return
    for layer in _keras.flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            raise ValueError(
                f"m=1 (1-SAM) gives BatchNormalization layer "
                f"{layer.name!r} a batch of a single example. Use a "
                "model with LayerNormalization or GroupNormalization "
                "(as Baek et al. do), or m >= 2."
            )
