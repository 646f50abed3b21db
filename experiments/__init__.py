"""The studies that reproduce the papers' tables (see README.md)."""

from experiments import startup

# Run as `python -m experiments.<study>`: this runs before TensorFlow loads.
startup.quiet_tensorflow_startup()
