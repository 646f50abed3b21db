"""Callbacks: rho schedules, sharpness logging, label-noise monitoring."""

from keras_sam.callbacks.exact_resume import ExactBackupAndRestore
from keras_sam.callbacks.noise_monitor import NoiseMonitor
from keras_sam.callbacks.rho_scheduler import RhoScheduler
from keras_sam.callbacks.sharpness_logger import SharpnessLogger

__all__ = [
    "ExactBackupAndRestore",
    "NoiseMonitor",
    "RhoScheduler",
    "SharpnessLogger",
]
