"""m-sharpness on clean digits: m in {1, 4, 16, 64} x 5 rhos x 3 seeds."""

from experiments import m_sharpness


def get_config():
    return m_sharpness.Config(
        dataset="digits",
        model="mlp",
        epochs=20,
        batch_size=64,
        learning_rate=0.05,
        momentum=0.9,
        seeds=(0, 1, 2),
        ms=(1, 4, 16, 64),
        rhos=(0.02, 0.05, 0.1, 0.2, 0.5),
        noise_rate=0.0,
    )
