"""Noise robustness on digits: 5 methods x 5 noise rates x 5 seeds."""

from experiments import noise_robustness


def get_config():
    return noise_robustness.Config(
        dataset="digits",
        model="mlp",
        epochs=30,
        batch_size=32,
        learning_rate=0.05,
        momentum=0.9,
        seeds=(0, 1, 2, 3, 4),
        noise_rates=(0.0, 0.2, 0.4, 0.6, 0.8),
        rho=0.2,
        mixup_alpha=1.0,
    )
