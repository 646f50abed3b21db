"""SAM's step, backend-neutral: `keras.ops` only, no backend imported.

- `options.py`: the settings of the step (`SAMOptions`), validated once;
- `perturbation.py`: eq. 2's dual vector, norms, projection, ASAM's scale
  and Sparse SAM's mask;
- `step.py`: the algorithm over passes (first pass, perturbation pipeline,
  descent; L-SAM/J-SAM; LookSAM's direction), against an
  `evaluate(weights, batch)` function that returns a `Pass`;
- `policy.py`: when a step runs SAM (the cheap-SAM family) and the state
  those policies keep, with the backend's conditional passed in.

Each backend's half (the pass itself, groups, the conditional step,
committing state) is in `keras_sam/backend/`; `make test` runs
`tests/core` (every option against hand computations) on TensorFlow, JAX
and PyTorch.
"""
