"""Configs of the studies: `get_config()` returns a study's dataclass.

`<study>.py` is the affordable digits default; `<study>_cifar10.py` (and
others) override a few fields for the papers' setting on tfds data.
"""
