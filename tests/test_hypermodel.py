"""Tests of keras_sam.hypermodel.SAMHyperModel."""

import keras
import keras_tuner
import numpy as np
import pytest

import keras_sam
from keras_sam.hypermodel import PAPER_GRID
from keras_sam.hypermodel import SAMHyperModel


def build_tiny():
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]
    )


def test_default_space_is_the_paper_grid():
    hp = keras_tuner.HyperParameters()
    model = SAMHyperModel(build_tiny).build(hp)
    assert isinstance(model, keras_sam.SAMModel)
    assert tuple(hp.space[0].values) == PAPER_GRID
    assert float(model.rho.numpy()) == pytest.approx(PAPER_GRID[0])


def test_trial_values_reach_the_model():
    hypermodel = SAMHyperModel(
        build_tiny,
        optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
        rho=[0.05, 0.2],
        m=[2, 4],
        learning_rate=[0.1, 0.03],
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    hp.values.update(rho=0.2, m=4, learning_rate=0.03)
    model = hypermodel.build(hp)
    assert float(model.rho.numpy()) == pytest.approx(0.2)
    assert model.m == 4
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.03)
    assert float(model.optimizer.momentum) == pytest.approx(0.9)
    other = hypermodel.build(hp)
    assert other.optimizer is not model.optimizer  # fresh per trial


def test_build_model_receives_hp():
    def build(hp):
        units = hp.Int("units", 2, 8, step=2)
        return keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(units)]
        )

    hp = keras_tuner.HyperParameters()
    model = SAMHyperModel(build).build(hp)
    assert "units" in hp and "rho" in hp
    assert model.output_shape == (None, hp.get("units"))


def test_model_is_cloned_with_fresh_weights():
    source = keras_sam.SAMModel.from_model(build_tiny(), rho=0.3, m=2)
    before = [w.copy() for w in source.get_weights()]
    hp = keras_tuner.HyperParameters()
    model = SAMHyperModel(source, rho=[0.1]).build(hp)  # model= implied
    assert isinstance(model, keras_sam.SAMModel)
    assert model is not source
    assert float(model.rho.numpy()) == pytest.approx(0.1)
    assert model.m == 2  # kept from the SAMModel that was cloned
    assert not np.allclose(model.get_weights()[0], before[0])
    for w, b in zip(source.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_rho_schedule_choice_drives_rho():
    hypermodel = SAMHyperModel(build_tiny, rho=[0.1],
                               rho_schedule=["constant", "step_decay"])
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    hp.values["rho_schedule"] = "step_decay"
    model = hypermodel.build(hp)
    x, y = np.ones((8, 4), "float32"), np.zeros((8,), "int32")
    history = hypermodel.fit(hp, model, x, y, epochs=4, verbose=0)
    np.testing.assert_allclose(history.history["rho"],
                               [0.1, 0.1, 0.01, 0.001], rtol=1e-5)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((), {}, r"exactly one of `build_model`.*build_model=None"),
        ((build_tiny,), {"model": build_tiny()}, r"exactly one"),
        ((3,), {}, r"`build_model` must be a callable.*build_model=3"),
        ((build_tiny,), {"m": [0]}, r"m"),
        ((build_tiny,), {"learning_rate": [-1.0]},
         r"learning_rate.*> 0.*-1.0"),
        ((build_tiny,), {"rho_schedule": ["bogus"]}, r"bogus"),
        ((build_tiny,), {"rho_schedule": []}, r"rho_schedule.*non-empty"),
    ],
)
def test_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAMHyperModel(*args, **kwargs)
