"""Each Keras backend's half of SAM's step.

`keras_sam/core` holds what is backend-neutral (the options, the
perturbation pipeline, the algorithm over passes, the cheap-SAM policy's
decisions), written in `keras.ops`. A folder here per backend holds the
rest, as Keras splits `keras/src/backend/*/trainer.py` from the model: one
side-effect-free pass with its gradient, the conditional step, the map
over m-groups, the replica reduction and how state updates are committed.
SAM's step is written for TensorFlow today (`tensorflow/`).
"""
