"""Crash and resume: SIGKILL mid-run, BackupAndRestore, same end state.

The test runs this file as a script (`python -m tests.test_resume`) in
separate processes: one trains without interruption; one kills itself with
SIGKILL in the middle of an epoch, after BackupAndRestore has written the
previous epoch's backup; a third restarts the same command, which resumes
from the backup. The restarted run must end with exactly the weights,
optimizer state (iterations, momentum) and rho of the uninterrupted run,
while a RhoScheduler changes rho every epoch.
"""

import argparse
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # kills and restarts a training subprocess

EPOCHS = 5
CRASH_EPOCH, CRASH_BATCH = 3, 4  # 0-based: epochs 0-2 are backed up
EXAMPLES, BATCH = 256, 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------- the subprocess


def train(workdir, crash):
    """Trains a tiny SAM MLP on digits with BackupAndRestore in `workdir`."""
    import keras
    import tensorflow as tf

    import keras_sam
    from keras_sam import schedules

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()

    class Crash(keras.callbacks.Callback):
        """Sends SIGKILL to this process at (CRASH_EPOCH, CRASH_BATCH)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if (self.epoch, batch) == (CRASH_EPOCH, CRASH_BATCH):
                os.kill(os.getpid(), signal.SIGKILL)

    data = keras_sam.datasets.load_digits()
    x, y = data.train.x[:EXAMPLES], data.train.y[:EXAMPLES]
    base = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model = keras_sam.SAMModel.from_model(base, rho=0.05)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callbacks = [
        keras_sam.RhoScheduler(schedules.ExponentialDecay(0.2, k=0.3)),
        keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
    ]
    if crash:
        callbacks.append(Crash())
    history = model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        callbacks=callbacks,
    )
    optimizer = model.optimizer
    np.savez(
        os.path.join(workdir, "final.npz"),
        iterations=int(optimizer.iterations.numpy()),
        rho=float(model.rho.numpy()),
        epochs_run=len(history.history["loss"]),
        **{f"weight_{i}": v.numpy() for i, v in enumerate(model.weights)},
        **{
            f"optimizer_{i}": v.numpy()
            for i, v in enumerate(optimizer.variables)
        },
    )


# --------------------------------------------------------------- the test


def command(workdir, crash=False):
    args = [sys.executable, "-m", "tests.test_resume", "--workdir", workdir]
    return args + (["--crash"] if crash else [])


def start(workdir, crash=False):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        command(workdir, crash), cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    straight, crashing = tmp_path / "straight", tmp_path / "crashing"
    straight.mkdir()
    crashing.mkdir()
    # The two first runs share the CPU; the restart follows the crash.
    uninterrupted = start(str(straight))
    killed = start(str(crashing), crash=True)
    code, output = finish(killed)
    assert code == -signal.SIGKILL, output
    backup = crashing / "backup"
    assert (backup / "latest.weights.h5").exists()
    assert (backup / "training_metadata.json").read_text().startswith(
        f'{{"epoch": {CRASH_EPOCH}'
    )
    assert not (crashing / "final.npz").exists()

    code, output = finish(start(str(crashing)))
    assert code == 0, output
    code, output = finish(uninterrupted)
    assert code == 0, output

    expected = dict(np.load(straight / "final.npz"))
    resumed = dict(np.load(crashing / "final.npz"))
    assert int(expected["iterations"]) == EPOCHS * EXAMPLES // BATCH
    assert int(resumed["iterations"]) == int(expected["iterations"])
    # rho of the last epoch: 0.2 exp(-0.3 * 4), set by the scheduler.
    np.testing.assert_allclose(expected["rho"], 0.2 * np.exp(-1.2),
                               rtol=1e-6)
    assert float(resumed["rho"]) == float(expected["rho"])
    # The restart ran only the epochs that were not backed up.
    assert int(resumed["epochs_run"]) == EPOCHS - CRASH_EPOCH
    assert sorted(resumed) == sorted(expected)
    for key in sorted(expected):
        if key.startswith(("weight_", "optimizer_")):
            np.testing.assert_array_equal(resumed[key], expected[key],
                                          err_msg=key)
    momentum = [k for k in expected if k.startswith("optimizer_")]
    assert any(np.abs(expected[k]).sum() > 0 for k in momentum[1:])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--crash", action="store_true")
    flags = parser.parse_args()
    train(flags.workdir, flags.crash)
