"""Fixtures of the label-noise tests."""

import numpy as np
import pytest


@pytest.fixture
def clean():
    return np.random.default_rng(0).integers(0, 10, size=1000).astype("int32")
