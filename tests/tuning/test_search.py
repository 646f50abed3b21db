"""Tests of keras_sam.tuning.search: grid and Bayesian rho search."""

import functools
import subprocess
import sys
import textwrap

import keras
import keras_tuner
import numpy as np
import pytest

from keras_sam import noise
from keras_sam import tuning

NUM_CLASSES = 3


def build_tiny():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )


@pytest.fixture
def data():
    """60 examples; feature 0 is the example's index, to trace the split."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype("float32")
    x[:, 0] = np.arange(60)
    y = (np.arange(60) % NUM_CLASSES).astype("int32")
    return x, y


class CountingHyperModel(tuning.SAMHyperModel):
    """Counts the trials it trains (KerasTuner also builds once at init)."""

    fits = 0

    def fit(self, hp, model, *args, **kwargs):
        CountingHyperModel.fits += 1
        return super().fit(hp, model, *args, **kwargs)


def check_best(result):
    """The best rho is the rho of the trial with KerasTuner's best score."""
    trials = result.tuner.oracle.trials
    scores = {t.trial_id: t.score for t in trials.values()}
    best_score = max(scores.values())
    assert result.best_score == pytest.approx(best_score)
    winners = {
        trials[i].hyperparameters.get("rho")
        for i, s in scores.items()
        if s == best_score
    }
    assert result.best_rho in winners
    assert result.best_hyperparameters["rho"] == result.best_rho


def test_grid_search_two_trials(data, tmp_path):
    result = tuning.grid_search(
        build_tiny, *data, directory=tmp_path, max_trials=2, epochs=2,
        batch_size=16,
    )
    assert [row["trial_id"] for row in result.trials] == ["0", "1"]
    rhos = [row["rho"] for row in result.trials]
    # The grid walks the paper's values in order.
    assert rhos == list(tuning.PAPER_GRID[:2])
    for row in result.trials:
        assert row["status"] == "COMPLETED"
        assert 0.0 <= row["score"] <= 1.0
        assert set(row) == {"trial_id", "rho", "score", "best_epoch",
                            "status"}
    check_best(result)


def test_bayesian_search_two_trials(data, tmp_path):
    result = tuning.bayesian_search(
        build_tiny, *data, directory=tmp_path, rho_range=(0.02, 0.3),
        max_trials=2, epochs=2, batch_size=16,
    )
    rhos = [row["rho"] for row in result.trials]
    assert len(rhos) == 2 and len(set(rhos)) == 2
    assert all(0.02 <= r <= 0.3 for r in rhos)
    space = result.tuner.oracle.hyperparameters
    assert space.space[0].sampling == "log"
    check_best(result)


def test_grid_search_with_extra_hyperparameters(data, tmp_path):
    hypermodel = tuning.SAMHyperModel(build_tiny, learning_rate=[0.1, 0.01])
    result = tuning.grid_search(
        hypermodel, *data, directory=tmp_path, rho_values=[0.05, 0.1],
        max_trials=2, epochs=1,
    )
    # The last hyperparameter moves first through the grid.
    values = [(r["rho"], r["learning_rate"]) for r in result.trials]
    assert values == [(0.05, 0.1), (0.05, 0.01)]


@pytest.mark.parametrize("search", ["grid", "bayesian"])
def test_interrupted_search_resumes(search, data, tmp_path):
    run = functools.partial(
        tuning.grid_search if search == "grid" else tuning.bayesian_search,
        CountingHyperModel(build_tiny),
        *data,
        directory=tmp_path,
        project_name="resume",
        epochs=1,
    )
    CountingHyperModel.fits = 0
    first = run(max_trials=1)
    assert CountingHyperModel.fits == 1
    first_rho = first.trials[0]["rho"]

    CountingHyperModel.fits = 0
    second = run(max_trials=2)  # a new tuner on the same directory
    assert CountingHyperModel.fits == 1  # only the new trial ran
    assert [r["trial_id"] for r in second.trials] == ["0", "1"]
    assert second.trials[0]["rho"] == first_rho
    assert second.trials[0]["score"] == first.trials[0]["score"]
    assert second.trials[1]["rho"] != first_rho
    if search == "grid":
        assert second.trials[1]["rho"] == tuning.PAPER_GRID[1]

    CountingHyperModel.fits = 0
    third = run(max_trials=2)  # nothing left to do
    assert CountingHyperModel.fits == 0
    assert len(third.trials) == 2


def test_prepare_search_data_keeps_validation_clean(data):
    x, y = data
    label_noise = functools.partial(
        noise.symmetric_noise, rate=0.5, num_classes=NUM_CLASSES, seed=3
    )
    prepared = tuning.prepare_search_data(
        x, y, validation_fraction=0.2, label_noise=label_noise
    )
    train_idx = prepared.train.x[:, 0].astype(int)
    val_idx = prepared.validation.x[:, 0].astype(int)
    assert len(val_idx) == 12 and len(train_idx) == 48
    assert not set(train_idx) & set(val_idx)
    np.testing.assert_array_equal(prepared.validation.y, y[val_idx])
    corrupted = prepared.train.y != y[train_idx]
    assert corrupted.sum() == 24  # exactly half of the training labels
    np.testing.assert_array_equal(corrupted, prepared.noise.is_noisy)


def test_search_scores_on_clean_validation(data, tmp_path, monkeypatch):
    x, y = data
    seen = {}
    original = keras_tuner.Tuner.search

    def spy(self, x_fit, y_fit, **kwargs):
        seen.update(x=x_fit, y=y_fit, validation=kwargs["validation_data"])
        return original(self, x_fit, y_fit, **kwargs)

    monkeypatch.setattr(keras_tuner.Tuner, "search", spy)
    label_noise = functools.partial(
        noise.symmetric_noise, rate=0.6, num_classes=NUM_CLASSES, seed=1
    )
    tuning.grid_search(
        build_tiny, x, y, directory=tmp_path, max_trials=1, epochs=1,
        label_noise=label_noise,
    )
    x_val, y_val = seen["validation"]
    val_idx = x_val[:, 0].astype(int)
    train_idx = seen["x"][:, 0].astype(int)
    assert len(val_idx) == 6  # 10% of 60
    np.testing.assert_array_equal(y_val, y[val_idx])  # clean
    assert (seen["y"] != y[train_idx]).sum() == round(0.6 * 54)  # noisy


def test_explicit_validation_data_is_passed_as_given(data, tmp_path):
    x, y = data
    x_val, y_val = x[:5] + 100.0, y[:5]
    result = tuning.grid_search(
        build_tiny, x, y, directory=tmp_path, max_trials=1, epochs=1,
        validation_data=(x_val, y_val),
    )
    np.testing.assert_array_equal(result.data.validation.x, x_val)
    np.testing.assert_array_equal(result.data.train.y, y)


def no_rho_space():
    hp = keras_tuner.HyperParameters()
    hp.Choice("learning_rate", [0.1, 0.01])
    return hp


@pytest.mark.parametrize(
    "search, kwargs, match",
    [
        ("grid", {"hyperparameters": no_rho_space()},
         r"hyperparameters.*'rho'.*\['learning_rate'\].*hp\.Choice"),
        ("bayesian", {"hyperparameters": no_rho_space()},
         r"hyperparameters.*'rho'"),
        ("grid", {"rho_values": []}, r"rho_values.*Received: rho_values=\[\]"),
        ("grid", {"rho_values": [0.0, 0.1]}, r"rho_values.*> 0"),
        ("bayesian", {"rho_range": (0.0, 1.0)},
         r"rho_range.*0 < min < max.*rho_range=\(0.0, 1.0\)"),
        ("bayesian", {"rho_range": (-0.1, 1.0)}, r"rho_range.*-0.1"),
        ("bayesian", {"rho_range": (0.5, 0.1)}, r"rho_range.*\(0.5, 0.1\)"),
        ("grid", {"validation_fraction": 0.001},
         r"validation_fraction.*0.001.*0 validation examples.*Use"),
        ("bayesian", {"validation_fraction": 1.0}, r"validation_fraction=1.0"),
        ("grid", {"validation_data": (np.zeros((0, 4)), np.zeros((0,)))},
         r"validation_data.*0 inputs and 0 labels.*pass held-out"),
    ],
)
def test_errors(search, kwargs, match, data, tmp_path):
    run = tuning.grid_search if search == "grid" else tuning.bayesian_search
    with pytest.raises(ValueError, match=match):
        run(build_tiny, *data, directory=tmp_path, project_name="p",
            **kwargs)
    assert not (tmp_path / "p").exists()  # raised before any trial


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho_range": (0, 1)}, r"rho_range.*0 < min"),
        ({"rho_range": (0.2, 0.2)}, r"rho_range=\(0.2, 0.2\)"),
        ({"rho": []}, r"`rho`.*non-empty"),
        ({"rho": [0.1], "rho_range": (0.01, 1)}, r"not both"),
    ],
)
def test_hypermodel_space_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tuning.SAMHyperModel(build_tiny, **kwargs)


class InterruptedHyperModel(tuning.SAMHyperModel):
    """Raises KeyboardInterrupt in its second trial, once."""

    fits = 0
    interrupt = True

    def fit(self, hp, model, *args, **kwargs):
        InterruptedHyperModel.fits += 1
        if InterruptedHyperModel.fits == 2 and InterruptedHyperModel.interrupt:
            raise KeyboardInterrupt
        return super().fit(hp, model, *args, **kwargs)


def test_grid_search_resumes_a_trial_killed_mid_run(data, tmp_path):
    run = functools.partial(
        tuning.grid_search,
        InterruptedHyperModel(build_tiny),
        *data,
        directory=tmp_path,
        max_trials=3,
        epochs=1,
    )
    InterruptedHyperModel.fits, InterruptedHyperModel.interrupt = 0, True
    with pytest.raises(KeyboardInterrupt):
        run()
    InterruptedHyperModel.fits, InterruptedHyperModel.interrupt = 0, False
    result = run()
    assert InterruptedHyperModel.fits == 2  # the killed trial, then the next
    assert [r["rho"] for r in result.trials] == list(tuning.PAPER_GRID[:3])
    assert all(r["status"] == "COMPLETED" for r in result.trials)


class RecordOptimizers(keras.callbacks.Callback):
    """Records each trial's optimizer (KerasTuner copies callbacks)."""

    seen = []

    def on_train_end(self, logs=None):
        RecordOptimizers.seen.append(self.model.optimizer)


def test_search_trains_with_the_users_optimizer(data, tmp_path):
    model = build_tiny()
    model.compile(
        optimizer=keras.optimizers.Adam(0.003, beta_1=0.8, beta_2=0.95),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    RecordOptimizers.seen = []
    result = tuning.grid_search(
        model, *data, directory=tmp_path, rho_values=[0.05, 0.1], epochs=1,
        batch_size=16, callbacks=[RecordOptimizers()],
    )
    assert [row["status"] for row in result.trials] == ["COMPLETED"] * 2
    first, second = RecordOptimizers.seen
    assert first is not second and first is not model.optimizer
    for optimizer in (first, second):
        assert type(optimizer) is keras.optimizers.Adam
        assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.003)
        assert (optimizer.beta_1, optimizer.beta_2) == (0.8, 0.95)
        assert int(optimizer.iterations.numpy()) == 4  # 54 examples / 16


def build_compiled_one_hot():
    model = build_tiny()
    model.compile(
        optimizer="adam", loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@pytest.mark.parametrize(
    "search, hypermodel",
    [("grid", build_compiled_one_hot), ("bayesian", build_tiny)],
)
def test_one_hot_labels(search, hypermodel, data, tmp_path):
    x, y = data
    one_hot = keras.utils.to_categorical(y, NUM_CLASSES)
    run = tuning.grid_search if search == "grid" else tuning.bayesian_search
    result = run(
        hypermodel, x, one_hot, directory=tmp_path, max_trials=2, epochs=1,
        batch_size=16,
    )
    assert [row["status"] for row in result.trials] == ["COMPLETED"] * 2
    scores = [row["score"] for row in result.trials]
    assert all(np.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)
    assert result.data.validation.y.shape == (6, NUM_CLASSES)


@pytest.mark.slow  # a fresh interpreter
def test_import_without_keras_tuner():
    """keras_sam imports without keras-tuner; a search names the extra."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["keras_tuner"] = None  # as if not installed
        import keras_sam
        from keras_sam import tuning
        for call in (
            lambda: keras_sam.grid_search(None, [[0.0]], [0], directory="."),
            lambda: keras_sam.SAMHyperModel(lambda: None),
            lambda: tuning.OBJECTIVE,
        ):
            try:
                call()
            except ImportError as error:
                print("ImportError:", error)
        print("keras_tuner" in sys.modules and sys.modules["keras_tuner"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    errors = [line for line in out.stdout.splitlines()
              if line.startswith("ImportError:")]
    assert len(errors) == 3
    for line in errors:
        assert "keras-tuner" in line
        assert 'pip install "keras_sam[tuning]"' in line
    assert out.stdout.splitlines()[-1] == "None"  # never imported
