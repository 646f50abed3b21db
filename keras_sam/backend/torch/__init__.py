"""The PyTorch half of SAM's step: `step.py` (the transforms the
functional step runs on; one device, as Keras' torch trainer)."""
