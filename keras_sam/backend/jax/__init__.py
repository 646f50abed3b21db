"""The JAX half of SAM's step: `step.py` (the transforms the functional
step runs on, and the commit of a step's state in Keras' JAX trainer)."""
