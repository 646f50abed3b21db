"""Resume after an interruption: rho from the step count, mid-epoch, RNG.

Each test trains once without interruption and once interrupted by an
exception at (epoch, batch), then restarted in a fresh model (same seed,
same command) from the backup directory, and compares the end states.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from keras_sam import schedules
from keras_sam.callbacks.exact_resume import ExactBackupAndRestore
from keras_sam.callbacks.exact_resume import random_state_variables

EXAMPLES, BATCH, EPOCHS = 48, 8, 3  # 6 steps per epoch, 18 in all


class Interrupt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt before batch `at[1]` of epoch `at[0]`."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


class RhoRecorder(keras.callbacks.Callback):
    """{(epoch, batch): rho} of every batch that ended."""

    def __init__(self):
        super().__init__()
        self.rhos = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.rhos[self.epoch, batch] = float(self.model.rho.numpy())


def unknown_cardinality_data():
    rng = np.random.RandomState(0)
    x = rng.normal(size=(EXAMPLES, 6)).astype("float32")
    y = rng.randint(0, 3, size=EXAMPLES)
    data = tf.data.Dataset.from_tensor_slices((x, y))
    data = data.filter(lambda x, y: True).batch(BATCH)
    assert data.cardinality() == tf.data.UNKNOWN_CARDINALITY
    return data


def sam_model(dropout):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(0.3))
    base = keras.Sequential(layers + [keras.layers.Dense(3)])
    model = keras_sam.SAMModel.from_model(base, rho=0.1)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def state(model):
    return {
        "weights": [v.numpy() for v in model.weights],
        "optimizer": [v.numpy() for v in model.optimizer.variables],
        "random": [keras.ops.convert_to_numpy(v)
                   for v in random_state_variables(model)],
        "rho": float(model.rho.numpy()),
        "iterations": int(model.optimizer.iterations.numpy()),
    }


def train(backup_factory, at=None, dropout=False):
    """One fit; with `at`, interrupted there and restarted from the backup.

    Returns the end state and `RhoRecorder.rhos` of the last fit.
    """
    schedule = schedules.ExponentialDecay(0.4, k=0.2)
    for attempt in ([Interrupt(at)], []) if at else ([],):
        model = sam_model(dropout)
        recorder = RhoRecorder()
        callbacks = [keras_sam.RhoScheduler(schedule, per="step"),
                     backup_factory(), recorder] + attempt
        try:
            model.fit(unknown_cardinality_data(), epochs=EPOCHS,
                      shuffle=False, verbose=0, callbacks=callbacks)
        except KeyboardInterrupt:
            continue
    return state(model), recorder.rhos


def assert_same_state(resumed, expected, keys):
    for key in keys:
        for a, b in zip(resumed[key], expected[key]):
            np.testing.assert_array_equal(a, b, err_msg=key)
    assert resumed["rho"] == expected["rho"]
    assert resumed["iterations"] == expected["iterations"]


def test_per_step_rho_resumes_on_unknown_cardinality(tmp_path):
    def backup():
        return keras.callbacks.BackupAndRestore(str(tmp_path / "b"))

    expected, expected_rhos = train(backup)
    resumed, rhos = train(backup, at=(2, 3))
    # The restart runs epoch 2 with rho continuing from the restored step
    # count (a per-fit counter restarted at 0.4, the initial rho).
    assert sorted(rhos) == [(2, b) for b in range(6)]
    assert [rhos[2, b] for b in range(6)] == [
        expected_rhos[2, b] for b in range(6)]
    assert max(rhos.values()) < 0.1
    assert_same_state(resumed, expected, ["weights", "optimizer"])


def test_keras_backup_mid_epoch_replays_the_epoch(tmp_path):
    """Documents Keras: save_freq=N restarts the epoch on later weights."""
    def backup():
        return keras.callbacks.BackupAndRestore(str(tmp_path / "b"),
                                                save_freq=2)

    expected, _ = train(backup)
    resumed, _ = train(backup, at=(1, 5))  # saved after batch 3 of epoch 1
    # Batches 0-3 of epoch 1 are trained twice.
    assert resumed["iterations"] == expected["iterations"] + 4


@pytest.mark.parametrize("dropout", [False, True])
def test_exact_backup_resumes_mid_epoch(tmp_path, dropout):
    def backup():
        return ExactBackupAndRestore(str(tmp_path / "b"), save_freq=2)

    expected, _ = train(backup, dropout=dropout)
    resumed, rhos = train(backup, at=(1, 5), dropout=dropout)
    # Batches 0-3 of epoch 1 are skipped (drawn, not trained).
    assert_same_state(resumed, expected, ["weights", "optimizer", "random"])
    if dropout:  # the seed state moved and was restored, not just reset
        initial = state(sam_model(dropout))["random"]
        assert any(np.any(a != b)
                   for a, b in zip(expected["random"], initial))


def test_exact_backup_random_state_matters(tmp_path):
    """Without the random state, Keras' backup resumes to other weights."""
    def backup():
        return keras.callbacks.BackupAndRestore(str(tmp_path / "b"))

    expected, _ = train(backup, dropout=True)
    resumed, _ = train(backup, at=(2, 3), dropout=True)
    assert resumed["iterations"] == expected["iterations"]
    assert any(np.any(a != b)
               for a, b in zip(resumed["weights"], expected["weights"]))
