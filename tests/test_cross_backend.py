"""SAMModel on JAX and PyTorch: cross-backend twins, refusals, files.

Each backend runs `tests/backend_run.py` in a process of its own, with
TensorFlow made unimportable there (as on a machine without it). This
TensorFlow process then checks what it recorded:

- the options that keep state between steps, trained four steps from
  the backend's initial weights: the same weights and logs as
  TensorFlow's step (the hand computations of `tests/core`, the oracle
  matrix among them, run on each backend directly: `make test`);
- rho = 0 twins against `keras.Model` on that backend: bit-exact weights,
  History, evaluate and predict, for five ways of building a model;
- the options that backend refuses, refused at construction with its name;
- `.keras` files across backends: PyTorch loads and trains on JAX's file,
  TensorFlow on both; a `RhoScheduler` sets rho on each; KerasTuner's
  grid over rho runs on each.
"""

import fcntl
import functools
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

from tests import backend_run
from tests.core.test_oracle_matrix import assert_all_close

pytestmark = pytest.mark.slow  # a process per backend, run once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "torch")
# The process's first lines: TensorFlow cannot be imported (as if it were
# not installed), then the runner.
NO_TENSORFLOW = (
    "import sys, runpy; "
    "sys.modules.update(tensorflow=None, tf_keras=None); "
    "runpy.run_module('tests.backend_run', run_name='__main__')"
)


@functools.lru_cache(maxsize=None)
def recorded(backend) -> str:
    """The folder `tests/backend_run.py` wrote on `backend`: run once per
    pytest run, by whichever xdist worker asks first (the others wait on
    a file lock, then read). PyTorch's run loads and trains on the file
    JAX's run saved."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    out = os.path.join(tempfile.gettempdir(), f"keras_sam-{backend}-{run}")
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(out, "done.json")):
            load = []
            if backend == "torch":
                load = [os.path.join(recorded("jax"), "saved.keras")]
            os.makedirs(out, exist_ok=True)
            env = dict(os.environ, KERAS_BACKEND=backend,
                       CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
            result = subprocess.run(
                [sys.executable, "-c", NO_TENSORFLOW, out, *load], cwd=ROOT,
                env=env, capture_output=True, text=True, timeout=900,
            )
            assert result.returncode == 0, result.stderr[-4000:]
    return out


def read_json(backend, name):
    with open(os.path.join(recorded(backend), name)) as f:
        return json.load(f)


def test_the_runs_had_no_tensorflow():
    for backend in BACKENDS:
        done = read_json(backend, "done.json")
        assert done == {"backend": backend, "tensorflow_imported": False}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", sorted(backend_run.POLICIES))
def test_stateful_options_train_as_on_tensorflow(backend, policy):
    """Four steps of a cheap SAM, Momentum-SAM or a kept mask from the
    backend's initial weights: TensorFlow's step (checked by hand in
    `tests/core/test_policy.py`) gives the same weights and logs."""
    arrays = np.load(os.path.join(recorded(backend), "policies.npz"))
    logs = read_json(backend, "policies.json")[policy]
    model = backend_run.policy_model(backend_run.POLICIES[policy])
    for i, v in enumerate(model.trainable_variables):
        v.assign(arrays[f"{policy}/initial/{i}"])
    expected_logs = backend_run.train_policy(model)
    assert_all_close(
        [v.path for v in model.trainable_variables],
        [arrays[f"{policy}/trained/{i}"]
         for i in range(len(model.trainable_variables))],
        [v.numpy() for v in model.trainable_variables],
        f"{backend} vs TensorFlow: {policy} weights",
    )
    for key in ("loss", "grad_norm", "sharpness"):
        np.testing.assert_allclose(logs[key], expected_logs[key],
                                   rtol=1e-5, atol=1e-5, err_msg=key)


# ------------------------------------------------------------------ twins


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build", sorted(backend_run.BUILDS))
def test_rho_zero_is_keras_model_bit_for_bit(backend, build):
    twin = read_json(backend, "twins.json")[build]
    assert twin["weights_max_diff"] == 0.0
    assert twin["history_equal"], twin["history"]
    assert twin["evaluate_equal"]
    assert twin["predict_equal"]
    assert twin["sam_keys"] == ["grad_norm", "rho", "sharpness"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_options_the_backend_lacks_are_refused_by_name(backend):
    refusals = read_json(backend, "refusals.json")
    assert set(refusals) == set(backend_run.REFUSED_OPTIONS)
    for name, message in refusals.items():
        assert message is not None, f"{name} was not refused on {backend}"
        assert f"the {backend} backend" in message
        assert "KERAS_BACKEND=tensorflow" in message
        for key in backend_run.REFUSED_OPTIONS[name]:
            assert key in message


# ------------------------------------------------------------------ files


SAVED = {"rho": 0.3, "m": 4, "adaptive": True}


@pytest.mark.parametrize("backend", BACKENDS)
def test_rho_schedule_and_the_keras_file(backend):
    files = read_json(backend, "files.json")
    np.testing.assert_allclose(files["scheduled_rho"], [0.1, 0.2, 0.3],
                               rtol=1e-6)
    config = files["reloaded_config"]
    assert {k: config[k] for k in SAVED} == pytest.approx(SAVED)
    assert files["reloaded_predict_equal"]


def test_torch_trains_on_a_file_jax_saved():
    files = read_json("torch", "files.json")
    assert files["loaded_class"] == "FunctionalSAMModel"
    config = files["loaded_config"]
    assert {k: config[k] for k in SAVED} == pytest.approx(SAVED)
    assert files["loaded_moved"]
    assert np.isfinite(files["loaded_history"]["loss"]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensorflow_trains_on_a_file_another_backend_saved(backend):
    model = keras.models.load_model(
        os.path.join(recorded(backend), "saved.keras"))
    assert {k: model.get_sam_config()[k] for k in SAVED} == pytest.approx(
        SAVED)
    x, y = backend_run.data()
    before = [v.numpy() for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["rho"] == pytest.approx([0.3])
    assert any(not np.array_equal(a, v.numpy())
               for a, v in zip(before, model.trainable_variables))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_rho_grid_search_runs(backend):
    tuner = read_json(backend, "tuner.json")
    assert tuner["trials"] == 2
    assert tuner["best_rho"] in (0.05, 0.1)


# ------------------------------------ callbacks and mixed precision


@pytest.mark.parametrize("backend", BACKENDS)
def test_backup_and_restore_resumes_to_the_uninterrupted_run(backend):
    # Weights, momentum, iterations and SAM's variables of a run killed
    # after its first epoch and resumed from Keras' BackupAndRestore equal
    # the uninterrupted run's (the resumed model started from other
    # initial weights, so nothing matches unless it was restored).
    report = read_json(backend, "callbacks.json")
    assert report["resumed_max_difference"] <= 1e-6
    assert report["resumed_rho"] == pytest.approx(0.2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_monitor_logs_every_epoch(backend):
    logs = read_json(backend, "callbacks.json")["noise_logs"]
    for key in ("train_clean_accuracy", "train_noisy_accuracy",
                "train_noisy_true_accuracy", "test_accuracy"):
        assert len(logs[key]) == 2, key
        assert all(0.0 <= value <= 1.0 for value in logs[key]), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_near_float32(backend, policy):
    report = read_json(backend, "callbacks.json")[policy]
    assert np.isfinite(report["loss"]).all()
    assert report["weight_dtypes"] == ["float32"]  # float32 master weights
    scaled = policy == "mixed_float16"  # compile adds the loss scaling
    assert (report["optimizer"] == "LossScaleOptimizer") == scaled
    # Low-precision passes move the weights off float32's by rounding only.
    assert 0.0 < report["max_difference_from_float32"] < 0.05
