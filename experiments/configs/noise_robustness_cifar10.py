"""Foret et al. table 4: ResNet-32 on CIFAR-10 with label noise.

200 epochs (section 3.3), rho 0.1 and 0.05 at 80% noise (section 3.3),
Mixup's alpha from {1, 8, 16, 32} (the paper reports the best of the four;
pass --override mixup_alpha=8, ...). The paper does not state the noise
runs' learning rate and weight decay: batch 256, lr 0.1, weight decay 5e-4,
cosine decay and momentum 0.9 are its CIFAR settings (appendix C.1, table
6). Augmentation: pad-4 crop, flip, cutout.
"""

import dataclasses

from experiments.configs import FORET_CIFAR10
from experiments.configs import noise_robustness


def get_config():
    return dataclasses.replace(
        noise_robustness.get_config(),
        **FORET_CIFAR10,
        model="resnet32",
        noise_rates=(0.2, 0.4, 0.6, 0.8),
        methods=("sgd", "mixup", "boot_mixup", "sam", "boot_sam"),
        rho=0.1,
        high_noise_rho=0.05,
        seeds=(0,),
    )
