"""Configs of the studies: `get_config()` returns a study's dataclass.

`<study>.py` is the affordable digits default; `<study>_cifar10.py` (and
others) override a few fields for the papers' setting on tfds data.
"""

# What the digits defaults share: the MLP, 30 epochs, batch 32, SGD at
# learning rate 0.05 with momentum 0.9.
DIGITS = {
    "dataset": "digits",
    "model": "mlp",
    "epochs": 30,
    "batch_size": 32,
    "learning_rate": 0.05,
    "momentum": 0.9,
}

# Foret et al.'s CIFAR-10 training (appendix C.1, table 6): 200 epochs,
# batch 256, learning rate 0.1 with cosine decay, weight decay 5e-4.
FORET_CIFAR10 = {
    "dataset": "cifar10",
    "epochs": 200,
    "batch_size": 256,
    "learning_rate": 0.1,
    "lr_schedule": "cosine",
    "weight_decay": 5e-4,
}
