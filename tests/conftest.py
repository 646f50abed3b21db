"""Test configuration: 4 logical CPU devices for tf.distribute, and seeds.

The suite runs on TensorFlow (the default here); `KERAS_BACKEND=jax` or
`torch` runs what is backend-neutral (e.g. `tests/core/test_perturbation.py`).

The logical devices must exist before TensorFlow initialises, so they are
configured here, at import time, before any test module touches TensorFlow.
Single-device tests keep running on the default strategy (`/cpu:0`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

NUM_LOGICAL_CPUS = 4

if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def seed():
    """Seeds Python, NumPy, TensorFlow and Keras before every test."""
    keras.utils.set_random_seed(1234)
    yield 1234


# A regular expression no failure message matches (see below).
_NO_FAILURE = r"\A(?!)"


def pytest_collection_modifyitems(config, items):
    """A test whose worker process dies (a segfault inside TensorFlow's
    C++ runtime: seen twice in CI, in tf.data's iterator reset during a
    twin-matrix `evaluate`, never reproduced alone) runs once more in a
    fresh worker, reported as a rerun; a test that fails is never rerun
    (`only_rerun` matches no failure; pytest-rerunfailures reschedules
    a crashed test from its `reruns` alone)."""
    if not config.pluginmanager.hasplugin("rerunfailures"):
        return
    for item in items:
        item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=[_NO_FAILURE]))


def pytest_configure(config):
    """Registers the `slow` marker (multi-process tests; `-m "not slow"`)."""
    config.addinivalue_line(
        "markers", "slow: starts worker processes (deselect: -m 'not slow')"
    )
