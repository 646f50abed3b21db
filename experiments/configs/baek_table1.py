"""Baek et al. table 1 on digits: LayerNorm MLP, 30% noise, 3 seeds.

Baek et al. tune the learning rate for SGD and then rho for 1-SAM at that
learning rate (appendix A.2); their rho = 0.01 is for ResNet-18 on CIFAR-10.
The digits rho and the penalty weights gamma_z, gamma_v (the paper gives
no values) are this repository's choices, not tuned.
"""

from experiments import baek_table1
from experiments.configs import DIGITS


def get_config():
    return baek_table1.Config(
        **{**DIGITS, "model": "mlp_ln"},
        seeds=(0, 1, 2),
        noise_rate=0.3,
        rho=0.1,
        gamma_z=0.01,
        gamma_v=0.01,
    )
