"""Tests of keras_sam.tuning.hypermodel.SAMHyperModel."""

import keras
import keras_tuner
import numpy as np
import pytest

import keras_sam
from keras_sam.tuning import PAPER_GRID
from keras_sam.tuning import SAMHyperModel


def build_tiny():
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]
    )


def test_default_space_is_the_paper_grid():
    hp = keras_tuner.HyperParameters()
    hypermodel = SAMHyperModel(build_tiny)
    assert isinstance(hypermodel, (SAMHyperModel, keras_tuner.HyperModel))
    model = hypermodel.build(hp)
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


def compiled_tiny(metric=None):
    """A model compiled the way a user might: Adam, one-hot loss, metric."""
    model = build_tiny()
    model.compile(
        optimizer=keras.optimizers.Adam(0.003, beta_1=0.8, beta_2=0.95),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        loss_weights=[0.5],
        metrics=[metric or keras.metrics.CategoricalAccuracy(name="acc")],
        run_eagerly=True,
    )
    return model


def check_adam(optimizer, learning_rate=0.003):
    assert type(optimizer) is keras.optimizers.Adam
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(
        learning_rate
    )
    assert optimizer.beta_1 == pytest.approx(0.8)
    assert optimizer.beta_2 == pytest.approx(0.95)


@pytest.mark.parametrize("source", ["model", "build_model"])
def test_compiled_model_keeps_its_compile(source):
    metric = keras.metrics.CategoricalAccuracy(name="acc")
    user = compiled_tiny(metric)
    hypermodel = (
        SAMHyperModel(user, rho=[0.1])
        if source == "model"
        else SAMHyperModel(lambda: compiled_tiny(), rho=[0.1])
    )
    hp = keras_tuner.HyperParameters()
    first, second = hypermodel.build(hp), hypermodel.build(hp)
    for model in (first, second):
        check_adam(model.optimizer)
        assert model.optimizer is not user.optimizer
        assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
        assert model.loss.get_config()["label_smoothing"] == 0.1
        assert model.run_eagerly
        assert model.get_compile_config()["loss_weights"] == [0.5]
    assert first.optimizer is not second.optimizer  # a fresh one per trial
    x = np.ones((4, 4), "float32")
    y = keras.utils.to_categorical([0, 1, 2, 0], 3)
    logs = first.evaluate(x, y, verbose=0, return_dict=True)
    assert "acc" in logs and np.isfinite(logs["loss"])
    # The trial counted with its own copy of the user's metric.
    assert all(float(v.numpy()) == 0.0 for v in metric.variables)


def test_tuned_learning_rate_keeps_the_rest_of_the_optimizer():
    hypermodel = SAMHyperModel(compiled_tiny, learning_rate=[0.02, 0.2])
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    hp.values["learning_rate"] = 0.2
    check_adam(hypermodel.build(hp).optimizer, learning_rate=0.2)


def test_hypermodel_arguments_override_the_models_compile():
    hypermodel = SAMHyperModel(
        compiled_tiny, optimizer=keras.optimizers.SGD(0.4, momentum=0.5)
    )
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert type(model.optimizer) is keras.optimizers.SGD
    assert model.optimizer.momentum == pytest.approx(0.5)
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)


def build_sam_tiny():
    return keras_sam.SAMModel.from_model(
        build_tiny(), rho=0.3, adaptive=True, eta=0.05, sam_every=2
    )


def test_tuned_m_builds_a_sam_model_with_the_trials_m():
    hypermodel = SAMHyperModel(build_sam_tiny, rho=[0.1], m=[2, 4])
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    ms = []
    for m in (2, 4):
        hp.values["m"] = m
        model = hypermodel.build(hp)
        ms.append(model.m)
        options = model.sam_options
        assert options.adaptive and options.eta == 0.05
        assert options.sam_every == 2
        assert float(model.rho.numpy()) == pytest.approx(0.1)
    assert ms == [2, 4]


SAM_OPTIONS = [
    dict(m=2, p=float("inf"), adaptive=True, eta=0.05, ascent_steps=2,
         perturbed_fraction=0.5, mask="random", mask_update_every=3,
         sam_every=2, seed=7),
    dict(gradient_rule="logit", p=3.0),
    dict(perturbation="random", second_order=False, seed=11),
    dict(second_order=True, mask="fisher", perturbed_fraction=0.25),
]


@pytest.mark.parametrize("options", SAM_OPTIONS)
def test_cloned_sam_model_keeps_every_option(options):
    source = keras_sam.SAMModel.from_model(build_tiny(), rho=0.3, **options)
    expected = source.sam_options.get_config()
    hp = keras_tuner.HyperParameters()
    model = SAMHyperModel(source, rho=[0.1]).build(hp)
    assert model is not source
    assert model.sam_options.get_config() == expected
    assert float(model.rho.numpy()) == pytest.approx(0.1)
