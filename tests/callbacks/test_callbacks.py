"""Tests for keras_sam.callbacks against hand computations in numpy."""

import csv

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import schedules
from keras_sam.callbacks import NoiseMonitor
from keras_sam.callbacks import RhoScheduler
from keras_sam.callbacks import SharpnessLogger
from keras_sam.noise import NoisyLabels

LR = 0.1


class CountingSAMModel(keras_sam.SAMModel):
    """A SAMModel that counts how often its train step is traced."""

    traces = 0

    def train_step(self, data):
        CountingSAMModel.traces += 1
        return super().train_step(data)


class Recorder(keras.callbacks.Callback):
    """Records the weights and rho at the start of every step."""

    def __init__(self):
        super().__init__()
        self.weights, self.rhos, self.epoch_logs = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append(trainable_values(self.model))
        self.rhos.append(float(self.model.rho.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs.append(dict(logs))

    def on_train_end(self, logs=None):
        self.weights.append(trainable_values(self.model))


def trainable_values(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def linear_model(rho=0.5, cls=keras_sam.SAMModel):
    """A linear regression model; `cls=keras.Model` gives a plain one."""
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(inputs)
    kwargs = {} if cls is keras.Model else {"rho": rho}
    model = cls(inputs, outputs, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return model


@pytest.fixture
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    return x, y


def mse_and_grad(w, b, x, y):
    """The MSE of a linear model and its gradient, in float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    r = x @ w + b - y
    return np.mean(r**2), 2 * x.T @ r / r.size, 2 * r.sum(0) / r.size


def sam_step(w, b, x, y, rho):
    """One SAM-SGD step by hand: the new weights, ||g|| and sharpness."""
    loss, gw, gb = mse_and_grad(w, b, x, y)
    norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
    ew, eb = rho * gw / norm, rho * gb / norm
    loss_eps, sw, sb = mse_and_grad(w + ew, b + eb, x, y)
    return w - LR * sw, b - LR * sb, norm, loss_eps - loss


# ---------------------------------------------------------- RhoScheduler


def test_rho_scheduler_rho_is_used_by_next_step_without_retracing(
    regression,
):
    x, y = regression
    values = [0.05, 0.3, 0.0]
    CountingSAMModel.traces = 0
    model = linear_model(rho=0.5, cls=CountingSAMModel)
    recorder = Recorder()
    history = model.fit(
        x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
        callbacks=[RhoScheduler(lambda epoch: values[epoch]), recorder],
    )
    assert recorder.rhos == pytest.approx(values)
    assert history.history["rho"] == pytest.approx(values)
    for step, rho in enumerate(values):
        w, b = recorder.weights[step]
        new_w, new_b, _, _ = sam_step(w, b, x, y, rho)
        np.testing.assert_allclose(recorder.weights[step + 1][0], new_w,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(recorder.weights[step + 1][1], new_b,
                                   rtol=1e-5, atol=1e-6)
        # The model's own rho (0.5) would have given another update.
        other_w, _, _, _ = sam_step(w, b, x, y, 0.5)
        assert np.max(np.abs(other_w - new_w)) > 1e-3
    assert CountingSAMModel.traces == 1


def test_rho_scheduler_matches_model_built_with_that_rho(regression):
    x, y = regression
    scheduled = linear_model(rho=0.5)
    built = linear_model(rho=0.02)
    for target, source in zip(
        built.trainable_variables, scheduled.trainable_variables
    ):
        target.assign(source)
    scheduled.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
                  callbacks=[RhoScheduler(schedules.Constant(0.02))])
    built.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert float(built.rho.numpy()) == pytest.approx(0.02)
    for a, b in zip(trainable_values(scheduled), trainable_values(built)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_rho_scheduler_per_step(regression):
    x, y = regression
    schedule = schedules.ExponentialDecay(0.4, k=0.5)
    model = linear_model()
    recorder = Recorder()
    model.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0,
              callbacks=[RhoScheduler(schedule, per="step"), recorder])
    expected = [0.4 * np.exp(-0.5 * t) for t in range(8)]
    assert recorder.rhos == pytest.approx(expected, rel=1e-6)
    for step in range(8):
        batch = slice(2 * (step % 4), 2 * (step % 4) + 2)
        w, b = recorder.weights[step]
        new_w, _, _, _ = sam_step(w, b, x[batch], y[batch], expected[step])
        np.testing.assert_allclose(recorder.weights[step + 1][0], new_w,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "per, total, expected",
    [
        # 10 epochs: x0.1 from epoch 3, x0.01 from epoch 6.
        ("epoch", None, [1, 1, 1, .1, .1, .1, .01, .01, .01, .01]),
        # 5 epochs x 2 steps = 10 steps; logs hold the last step's rho.
        ("step", None, [1, .1, .1, .01, .01]),
        ("epoch", 20, [1] * 6 + [.1] * 4),
    ],
)
def test_rho_scheduler_fills_in_total(regression, per, total, expected):
    x, y = regression
    epochs = len(expected)
    history = linear_model().fit(
        x, y, batch_size=4, epochs=epochs, verbose=0,
        callbacks=[RhoScheduler(schedules.StepDecay(1.0), total=total,
                                per=per)],
    )
    assert history.history["rho"] == pytest.approx(expected)


def test_rho_lands_in_csv_logger(regression, tmp_path):
    x, y = regression
    path = tmp_path / "log.csv"
    linear_model().fit(
        x, y, epochs=3, verbose=0,
        callbacks=[RhoScheduler(lambda e: 0.1 * (e + 1)),
                   keras.callbacks.CSVLogger(str(path))],
    )
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["rho"]) for r in rows] == pytest.approx([0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    "value, match",
    [(-0.1, "rho=-0.1 at epoch 0"), (float("nan"), "rho=nan"),
     (float("inf"), "rho=inf"), ("big", "'big'")],
)
def test_rho_scheduler_rejects_bad_values(regression, value, match):
    x, y = regression
    with pytest.raises(ValueError, match=match):
        linear_model().fit(x, y, epochs=1, verbose=0,
                           callbacks=[RhoScheduler(lambda e: value)])


def test_rho_scheduler_needs_a_model_with_rho(regression):
    x, y = regression
    with pytest.raises(ValueError, match="needs a model with a `rho`"):
        linear_model(cls=keras.Model).fit(
            x, y, epochs=1, verbose=0,
            callbacks=[RhoScheduler(schedules.Constant(0.1))])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"schedule": 0.1}, "callable"), ({"per": "batch"}, "per='batch'"),
     ({"total": -3}, "total=-3")],
)
def test_rho_scheduler_invalid_arguments(kwargs, match):
    kwargs = {"schedule": schedules.Constant(0.1), **kwargs}
    with pytest.raises(ValueError, match=match):
        RhoScheduler(**kwargs)


# -------------------------------------------------------- SharpnessLogger


def test_sharpness_logger_records_the_steps_own_values(regression, tmp_path):
    x, y = regression
    model = linear_model(rho=0.2)
    recorder = Recorder()
    logger = SharpnessLogger(
        filename=tmp_path / "epochs.csv",
        batch_filename=tmp_path / "batches.csv",
    )
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
              callbacks=[recorder, logger])
    assert len(logger.batches) == 4 and len(logger.epochs) == 2
    for step, row in enumerate(logger.batches):
        batch = slice(4 * (step % 2), 4 * (step % 2) + 4)
        w, b = recorder.weights[step]
        _, _, norm, sharpness = sam_step(w, b, x[batch], y[batch], 0.2)
        assert row["grad_norm"] == pytest.approx(norm, rel=1e-4)
        assert row["sharpness"] == pytest.approx(sharpness, rel=1e-3)
        assert row["rho"] == pytest.approx(0.2)
    batches = logger.table(per_batch=True)
    for epoch, row in enumerate(logger.epochs):
        in_epoch = batches["epoch"] == epoch
        for name in ("grad_norm", "sharpness"):
            assert row[name] == pytest.approx(
                recorder.epoch_logs[epoch][name])
            assert row[name] == pytest.approx(
                batches[name][in_epoch].mean(), rel=1e-5)
    with open(tmp_path / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "rho", "loss", "grad_norm", "sharpness"]
    assert [float(r["grad_norm"]) for r in rows] == pytest.approx(
        [r["grad_norm"] for r in logger.epochs])
    with open(tmp_path / "batches.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_sharpness_logger_needs_sam_metrics(regression):
    x, y = regression
    with pytest.raises(ValueError, match="grad_norm"):
        linear_model(cls=keras.Model).fit(
            x, y, epochs=1, verbose=0, callbacks=[SharpnessLogger()])


# ----------------------------------------------------------- NoiseMonitor


def test_noise_monitor_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4)).astype("float32")
    clean = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)
    is_noisy = np.zeros(30, bool)
    is_noisy[::3] = True
    labels = np.where(is_noisy, (clean + 1) % 3, clean).astype("int32")
    noisy = NoisyLabels(labels, clean, is_noisy)
    x_test = rng.normal(size=(12, 4)).astype("float32")
    y_test = ((x_test[:, 0] > 0).astype("int32") + (x_test[:, 1] > 0))

    inputs = keras.Input((4,))
    model = keras_sam.SAMModel(
        inputs, keras.layers.Dense(3)(inputs), rho=0.05)
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    recorder = Recorder()
    history = model.fit(
        x, labels, batch_size=10, epochs=6, verbose=0,
        callbacks=[NoiseMonitor(x, noisy, test_data=(x_test, y_test)),
                   recorder],
    )
    h = history.history
    weights = recorder.weights[3::3]  # after each epoch (3 steps each)
    assert len(weights) == 6
    best = 0.0
    for epoch, (kernel, bias) in enumerate(weights):
        pred = (x @ kernel + bias).argmax(1)
        test = float(np.mean((x_test @ kernel + bias).argmax(1) == y_test))
        best = max(best, test)
        assert h["train_clean_accuracy"][epoch] == pytest.approx(
            np.mean(pred[~is_noisy] == clean[~is_noisy]))
        assert h["train_noisy_accuracy"][epoch] == pytest.approx(
            np.mean(pred[is_noisy] == labels[is_noisy]))
        assert h["train_noisy_true_accuracy"][epoch] == pytest.approx(
            np.mean(pred[is_noisy] == clean[is_noisy]))
        assert h["test_accuracy"][epoch] == pytest.approx(test)
        assert h["best_test_accuracy"][epoch] == pytest.approx(best)
    assert len(set(h["test_accuracy"])) > 1  # the check is not vacuous


def test_noise_monitor_validates_inputs():
    noisy = NoisyLabels(np.zeros(4, int), np.zeros(4, int), np.zeros(4, bool))
    with pytest.raises(ValueError, match="3 examples but `noisy` has 4"):
        NoiseMonitor(np.zeros((3, 2)), noisy)
    with pytest.raises(ValueError, match="NoisyLabels"):
        NoiseMonitor(np.zeros((4, 2)), np.zeros(4))
