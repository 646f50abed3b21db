"""Foret et al. appendix C.5/C.6 on clean CIFAR-10 with a WideResNet.

The paper ablates a WideResNet (C.5 does not name its size; C.6 reports 20
runs); WRN-16-8 keeps it affordable, pass --override 'model_kwargs={"depth":
28, "width": 10}' for WRN-28-10. Batch 256, lr 0.1, weight decay 5e-4,
cosine decay, rho 0.05 (appendix C.1, table 6), 200 epochs.
"""

import dataclasses

from experiments.configs import FORET_CIFAR10
from experiments.configs import ablations


def get_config():
    return dataclasses.replace(
        ablations.get_config(),
        **FORET_CIFAR10,
        model="wrn",
        model_kwargs={"depth": 16, "width": 8},
        noise_rate=0.0,
        rho=0.05,
        seeds=(0,),
    )
