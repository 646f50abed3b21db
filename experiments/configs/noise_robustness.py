"""Noise robustness on digits: 5 methods x 5 noise rates x 5 seeds."""

from experiments import noise_robustness
from experiments.configs import DIGITS


def get_config():
    return noise_robustness.Config(
        **DIGITS,
        seeds=(0, 1, 2, 3, 4),
        noise_rates=(0.0, 0.2, 0.4, 0.6, 0.8),
        rho=0.2,
        mixup_alpha=1.0,
    )
