"""SAM's step as functions of a pass, the weights, a batch, options and rho.

- `step.py`: the algorithm (ascent, perturbation pipeline, descent), written
  in `keras.ops` (with `keras_sam/perturbation.py`) against an
  `evaluate(weights, batch)` function that returns a `Pass`: it runs on
  TensorFlow, JAX and PyTorch (tests/core/test_backends.py).
- `tensorflow.py`: what is backend-specific: one pass of a Keras model
  without side effects (`keras.StatelessScope` + `tf.GradientTape`), the
  map over m-groups, the conditional SAM step and the replica's random
  draws. `policy.py` (cheap SAM's per-step state), `per_example.py` and
  `rank_one.py` (fast 1-SAM) and `sync.py` (moving statistics across
  replicas) are its TensorFlow helpers; a JAX or PyTorch `SAMModel` needs
  a module like `tensorflow.py` and these four.
"""
