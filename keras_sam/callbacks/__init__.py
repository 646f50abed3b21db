"""Callbacks: rho schedules, sharpness logging, label-noise monitoring."""

from keras_sam.callbacks.noise_monitor import NoiseMonitor
from keras_sam.callbacks.rho_scheduler import RhoScheduler
from keras_sam.callbacks.sharpness_logger import SharpnessLogger

__all__ = [
    "NoiseMonitor",
    "RhoScheduler",
    "SharpnessLogger",
]
