"""Loading a file imports nothing the file names (Keras' own rule).

A `.keras` file of a model converted with `SAMModel.from_model` names its
base class in its config (`sam_base_class`). The loader resolves it through
Keras' registry and `custom_objects` only (and Keras/KerasHub modules, as
Keras' loader does since CVE-2025-1550); a tampered file that names any
other module must fail with the fix in the message, importing nothing.
"""

import json
import pickle
import sys
import zipfile

import keras
import numpy as np
import pytest

import keras_sam

CANARY = "tests.import_canary"


class Unregistered(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


@keras.saving.register_keras_serializable(package="keras_sam_loading")
class Registered(Unregistered):
    pass


def saved(tmp_path, model_class):
    model = keras_sam.SAMModel.from_model(model_class(), rho=0.2, m=2)
    model(np.ones((2, 3), "float32"))
    path = str(tmp_path / "model.keras")
    model.save(path)
    return model, path


def tamper(path, **reference):
    """Rewrites the file's `sam_base_class` entry."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["sam_base_class"].update(reference)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def test_a_registered_base_class_loads(tmp_path):
    model, path = saved(tmp_path, Registered)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, Registered)
    assert isinstance(loaded, keras_sam.SAMModel)
    assert float(loaded.rho.numpy()) == pytest.approx(0.2) and loaded.m == 2
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_an_unregistered_class_needs_custom_objects(tmp_path):
    _, path = saved(tmp_path, Unregistered)
    with pytest.raises(ValueError, match="register_keras_serializable"):
        keras.models.load_model(path)
    loaded = keras.models.load_model(
        path, custom_objects={"Unregistered": Unregistered})
    assert isinstance(loaded, Unregistered)


@pytest.mark.parametrize("safe_mode", [True, False])
def test_a_tampered_file_imports_nothing(tmp_path, safe_mode):
    _, path = saved(tmp_path, Registered)
    tamper(path, module=CANARY, class_name="Canary",
           registered_name="Canary")
    sys.modules.pop(CANARY, None)
    with pytest.raises(ValueError, match=r"tests\.import_canary\.Canary"):
        keras.models.load_model(path, safe_mode=safe_mode)
    assert CANARY not in sys.modules


def test_keras_classes_still_resolve(tmp_path):
    """A lazily built Sequential, converted in place, names Keras' class."""
    stack = keras.Sequential([keras.layers.Dense(2)])
    assert keras_sam.SAMModel.from_model(stack, rho=0.1) is stack
    stack(np.ones((2, 3), "float32"))
    path = str(tmp_path / "stack.keras")
    stack.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras.Sequential)
    assert isinstance(loaded, keras_sam.SAMModel)


@keras.saving.register_keras_serializable(package="keras_sam_loading")
class FunctionalTask(keras_sam.SAMModel):
    """KerasHub's pattern: __init__ builds the graph, then calls
    `super().__init__(inputs=..., outputs=...)`."""

    def __init__(self, units=2, **kwargs):
        inputs = keras.Input((3,))
        outputs = keras.layers.Dense(units)(inputs)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name,
                **self.get_sam_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def test_a_subclass_built_functionally_calls_fits_and_saves(tmp_path):
    model = FunctionalTask(rho=0.2)
    assert isinstance(model, FunctionalTask)
    assert model(np.ones((2, 3), "float32")).shape == (2, 2)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    path = str(tmp_path / "task.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, FunctionalTask)
    assert float(loaded.rho.numpy()) == pytest.approx(0.2)
    assert keras_sam.SAMModel.__bases__[-1] is keras.Model  # untouched


def _lazy_sequential():
    return keras.Sequential([keras.layers.Dense(2)])


MODELS = {
    "functional": lambda: keras_sam.SAMModel(
        *(lambda i: (i, keras.layers.Dense(2)(i)))(keras.Input((3,)))),
    "functional_subclass": FunctionalTask,
    "from_model_subclass": lambda: keras_sam.SAMModel.from_model(Registered()),
    "from_model_lazy_sequential": lambda: keras_sam.SAMModel.from_model(
        _lazy_sequential()),
}
ROUND_TRIPS = {
    "pickle": lambda model, path: pickle.loads(pickle.dumps(model)),
    "keras_file": lambda model, path: (
        model.save(path), keras.models.load_model(path))[1],
}


@pytest.mark.parametrize("route", sorted(ROUND_TRIPS))
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trips_keep_class_and_compiled_state(name, compiled, route,
                                                    tmp_path):
    model = MODELS[name]()
    model(np.ones((2, 3), "float32"))
    if compiled:
        model.compile(optimizer="adam", loss="mse")
    loaded = ROUND_TRIPS[route](model, str(tmp_path / "m.keras"))
    assert type(loaded).__name__ == type(model).__name__
    assert isinstance(loaded, keras_sam.SAMModel)
    assert loaded.compiled == compiled
    if compiled:
        assert type(loaded.optimizer).__name__ == "Adam"
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_from_json_of_an_uncompiled_model_is_uncompiled():
    model = MODELS["functional"]()
    assert not keras.models.model_from_json(model.to_json()).compiled
