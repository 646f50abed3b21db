"""m-sharpness on digits with 40% label noise (not in Foret et al.).

Clean digits leave every setting within a few test examples of the others
(see experiments/README.md); with label noise the choice of m matters more
(Baek et al. 2024 find per-example 1-SAM the most robust). rho = 0.5 is
left out: it diverges for m <= 4 on clean digits already.
"""

import dataclasses

from experiments.configs import m_sharpness


def get_config():
    return dataclasses.replace(
        m_sharpness.get_config(),
        epochs=30,
        rhos=(0.02, 0.05, 0.1, 0.2),
        noise_rate=0.4,
    )
