"""Baek et al. table 1 as published: ResNet-18 with LayerNorm, CIFAR-10.

Appendix A.2: 30% symmetric noise, batch 128, learning rate 0.01, weight
decay 5e-4, 200 epochs, rho 0.01, no learning-rate schedule and no data
augmentation beyond per-channel normalisation. Momentum is not stated:
0 here (plain SGD). gamma_z and gamma_v are not stated either.
"""

import dataclasses

from experiments.configs import baek_table1


def get_config():
    return dataclasses.replace(
        baek_table1.get_config(),
        dataset="cifar10",
        model="resnet18_ln",
        augment=False,
        epochs=200,
        batch_size=128,
        learning_rate=0.01,
        momentum=0.0,
        weight_decay=5e-4,
        rho=0.01,
        seeds=(0,),
    )
