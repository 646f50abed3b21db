"""Ablations on digits at 40% label noise: 3 seeds, 30 epochs."""

from experiments import ablations
from experiments.configs import DIGITS


def get_config():
    return ablations.Config(
        **DIGITS,
        seeds=(0, 1, 2),
        noise_rate=0.4,
        rho=0.2,
        ascent_steps=(1, 2, 3, 5),
        rho_k=0.1,
    )
