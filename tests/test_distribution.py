"""`keras_sam.distribution` in one process (MWMS itself: test_multiworker).

The logical CPUs of tests/conftest.py give MirroredStrategy its replicas.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from keras_sam import distribution
from keras_sam.distribution import MultiWorkerFix
from tests.helpers import mirrored


class FixedModel(MultiWorkerFix, keras.Model):
    pass


class FixedSAM(keras_sam.SAMModel):  # SAMModel includes MultiWorkerFix
    pass


def build(model_class, **kwargs):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(keras.layers.Dense(3)(inputs))
    model = model_class(inputs, outputs, **kwargs)
    return model


def data():
    rng = np.random.RandomState(0)
    return rng.normal(size=(16, 4)).astype("f4"), rng.normal(size=(16, 2))


def test_installed_keras_still_has_both_bugs():
    # When this fails, Keras changed the failing calls: the workarounds
    # switched themselves off; rerun tests/test_multiworker.py.
    assert distribution.keras_bugs() == {"build": True, "scalar_logs": True}


def test_no_change_outside_multi_worker():
    model_class, base_class = FixedModel, keras.Model
    models = [build(model_class), build(base_class)]
    x, y = data()
    for model in models:
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(*(m.get_weights() for m in models)):
        np.testing.assert_array_equal(a, b)


def test_steps_per_execution_with_collective_all_reduce_is_refused():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert distribution.uses_collective_all_reduce(strategy)
    with strategy.scope():
        model = build(FixedSAM)
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    x, y = data()
    with pytest.raises(ValueError, match=(
            r"steps_per_execution=2 .*keras-team/keras#19246.*"
            r"ReductionToOneDevice")):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)


def test_steps_per_execution_with_reduction_to_one_device_trains():
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    assert not distribution.uses_collective_all_reduce(strategy)
    x, y = data()
    with strategy.scope():
        model = build(FixedSAM)
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 4


def test_steps_per_execution_set_after_compile_is_refused_at_fit():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build(FixedModel)
        model.compile(optimizer="sgd", loss="mse")
    model.steps_per_execution = 3
    with pytest.raises(ValueError, match="steps_per_execution=3"):
        model.fit(*data(), batch_size=4, verbose=0)


def test_enable_multi_worker_fit_keeps_the_class_for_saving(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert distribution.enable_multi_worker_fit(model) is model
    assert isinstance(model, MultiWorkerFix)
    assert type(model).__name__ == "Sequential"
    model.compile(optimizer="sgd", loss="mse")
    model.fit(*data(), batch_size=4, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is keras.Sequential
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="needs a keras.Model"):
        distribution.enable_multi_worker_fit(object())


def test_local_tf_configs():
    import json

    configs = [json.loads(c) for c in distribution.local_tf_configs(2)]
    workers = configs[0]["cluster"]["worker"]
    assert len(set(workers)) == 2
    assert [c["task"]["index"] for c in configs] == [0, 1]
    assert all(c["cluster"]["worker"] == workers for c in configs)


# ------------------------------------- saving inside a strategy's scope

STRATEGIES = {
    "mirrored": lambda: mirrored(2),  # no collective ops (tests/helpers)
    "one_device": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
}


def _save_routes(model, tmp_path):
    """Every way a user saves or describes a model, each with its result."""
    return {
        "get_config": model.get_config,
        "to_json": model.to_json,
        "get_compile_config": model.get_compile_config,
        "save": lambda: model.save(str(tmp_path / "model.keras")),
        "save_h5": lambda: model.save(str(tmp_path / "model.h5")),
        "save_weights": lambda: model.save_weights(
            str(tmp_path / "model.weights.h5")),
        "clone_model": lambda: keras.models.clone_model(model),
    }


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_saving_route_works_inside_the_scope(strategy, tmp_path):
    strategy = STRATEGIES[strategy]()
    x, y = data()
    with strategy.scope():
        model = build(keras_sam.SAMModel, rho=0.25, m=2)
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        model.rho.assign(0.125)  # the current value is what is saved
        for route, call in _save_routes(model, tmp_path).items():
            try:
                call()
            except Exception as error:  # noqa: BLE001 - name the route
                pytest.fail(f"{route} inside the scope: {error!r}")
        assert model.get_config()["rho"] == 0.125
        loaded = keras.models.load_model(str(tmp_path / "model.keras"))
        assert isinstance(loaded, keras_sam.SAMModel)
        assert float(loaded.rho.numpy()) == 0.125 and loaded.m == 2
        for a, b in zip(model.get_weights(), loaded.get_weights()):
            np.testing.assert_array_equal(a, b)
        loaded.fit(x, y, batch_size=4, epochs=1, verbose=0)  # keeps training


def _make_or_restore_model(checkpoints):
    """keras.io, "Multi-GPU and distributed training", fault tolerance."""
    saved = sorted(os.listdir(checkpoints))
    if saved:
        return keras.models.load_model(os.path.join(checkpoints, saved[-1]))
    model = build(keras_sam.SAMModel, rho=0.1)
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_fault_tolerance_recipe_runs_twice(strategy, tmp_path):
    strategy = STRATEGIES[strategy]()
    checkpoints = str(tmp_path / "ckpt")
    os.makedirs(checkpoints)
    x, y = data()
    iterations = []
    for _ in range(2):
        with strategy.scope():
            model = _make_or_restore_model(checkpoints)
        callback = keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoints, "ckpt-{epoch:02d}.keras"))
        model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                  callbacks=[callback])
        iterations.append(int(model.optimizer.iterations.numpy()))
        assert isinstance(model, keras_sam.SAMModel)
    assert iterations == [8, 16]  # the second run continued the first
    assert sorted(os.listdir(checkpoints)) == [
        "ckpt-01.keras", "ckpt-02.keras"]
