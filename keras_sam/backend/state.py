"""The state a forward pass may change: what SAM's step commits.

A leaf module: the step (`step.py`) and the exact 1-SAM path
(`per_example.py`) both collect the state a pass records in its
`keras.StatelessScope`, in the same order, so that their updates index
into one list.
"""

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
