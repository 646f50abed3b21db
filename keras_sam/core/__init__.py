"""SAM's step as functions of a pass, the weights, a batch, options and rho.

- `step.py`: the algorithm (ascent, perturbation pipeline, descent), written
  against an `evaluate(weights, batch)` function that returns a `Pass`.
- `tensorflow.py`: what is backend-specific: one pass of a Keras model
  without side effects (`keras.StatelessScope` + `tf.GradientTape`), the
  map over m-groups, the conditional SAM step and the replica's seed.
"""
