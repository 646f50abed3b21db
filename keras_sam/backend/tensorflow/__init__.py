"""The TensorFlow half of SAM's step.

- `step.py`: one pass of a Keras model without side effects
  (`keras.StatelessScope` + `tf.GradientTape`), the conditional step, the
  replica's random draws, and the commit of the pass's state updates;
- `groups.py`: splitting a replica's batch into m-groups and mapping the
  step over them;
- `per_example.py`, `rank_one.py`: exact 1-SAM for Dense, attention and
  LayerNorm models without per-example weight copies;
- `sync.py`: BatchNorm moving statistics averaged across replicas.
"""
