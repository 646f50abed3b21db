"""Foret et al. figure 3 (middle) on CIFAR-10 with a small ResNet.

The paper names only "a small ResNet"; ResNet-32 (BatchNorm) is used here,
so m starts at 4 (m = 1 would give BatchNorm single examples). Batch 256,
lr 0.1, weight decay 5e-4, cosine decay (appendix C.1, table 6).
"""

import dataclasses

from experiments.configs import FORET_CIFAR10
from experiments.configs import m_sharpness


def get_config():
    return dataclasses.replace(
        m_sharpness.get_config(),
        **FORET_CIFAR10,
        model="resnet32",
        ms=(4, 16, 64, 256),
        rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
        seeds=(0,),
    )
