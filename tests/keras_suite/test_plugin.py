"""The keras_suite plugin's mechanics, quickly (the full runs are slow).

The substitution of a test module's names, the `from_model` stand-in, and
one short run of the plugin on a few Keras tests in a subprocess.
"""

import types

import keras
import numpy as np
import pytest
from keras.src.models.functional import Functional

import keras_sam
from tests.keras_suite import known_differences
from tests.keras_suite import plugin
from tests.keras_suite import test_keras_suite


class Substitute:
    """A stand-in for the flavour's model class."""


def test_substitute_rebinds_model_and_the_modules_exporting_it():
    from keras.src import models

    module = types.ModuleType("fake_test")
    module.Model = keras.Model
    module.keras = keras
    module.models = models
    module.layers = keras.layers
    module.Sequential = keras.Sequential
    assert plugin.substitute(module, Substitute) == [
        "Model", "keras", "models"
    ]
    assert module.Model is Substitute
    assert module.keras.Model is Substitute
    assert module.models.Model is Substitute
    assert module.keras.layers is keras.layers
    assert module.models.Sequential is keras.Sequential
    assert module.layers is keras.layers
    assert module.Sequential is keras.Sequential


def test_substitute_refuses_a_subclass_made_at_import_time():
    module = types.ModuleType("fake_test")

    class Made(keras.Model):
        pass

    Made.__module__ = "fake_test"
    module.Made = Made
    with pytest.raises(pytest.UsageError, match="Made"):
        plugin.substitute(module, Substitute)


def test_from_model_stand_in():
    FromModel = plugin.from_model_class({"rho": 0.0})
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(inputs)
    model = FromModel(inputs, outputs)
    assert isinstance(model, keras_sam.SAMModel)
    assert isinstance(model, Functional)
    assert float(model.rho) == 0.0
    assert isinstance(model, FromModel)
    assert isinstance(keras.Model(inputs, outputs), FromModel)
    revived = FromModel.from_config(model.get_config())
    assert isinstance(revived, keras_sam.SAMModel)

    class Net(FromModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    assert Net.__bases__ == (keras.Model,)
    net = Net()
    assert isinstance(net, keras_sam.SAMModel) and isinstance(net, Net)
    assert net(np.ones((1, 3))).shape == (1, 2)


def test_a_short_run_of_the_plugin(tmp_path):
    """A few Keras tests in the `direct` flavour, with their accounting."""
    report, output = plugin.run_suite(
        "direct", str(tmp_path),
        extra=["-k", "test_json_serialization or "
                     "test_basic_flow_multi_input or "
                     "test_functional_pickling_single_output_1"],
    )
    assert report is not None, output
    tests = report["tests"]
    assert len(tests) == 3, sorted(tests)
    assert sum(1 for entry in tests.values() if entry["sam_models"]) == 2
    known = {
        pattern: entry
        for pattern, entry in known_differences.KNOWN["direct"].items()
        if plugin.matching(pattern, tests)
    }
    assert known  # test_basic_flow_multi_input, a known difference
    assert test_keras_suite.check(report, known) == []
