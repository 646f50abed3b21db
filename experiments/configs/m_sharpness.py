"""m-sharpness on clean digits: m in {1, 4, 16, 64} x 5 rhos x 3 seeds."""

from experiments import m_sharpness
from experiments.configs import DIGITS


def get_config():
    return m_sharpness.Config(
        **{**DIGITS, "epochs": 20, "batch_size": 64},
        seeds=(0, 1, 2),
        ms=(1, 4, 16, 64),
        rhos=(0.02, 0.05, 0.1, 0.2, 0.5),
        noise_rate=0.0,
    )
