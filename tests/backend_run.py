"""SAMModel on one Keras backend, recorded for `tests/test_cross_backend.py`.

Run as `KERAS_BACKEND=<name> python -m tests.backend_run OUT [LOAD]` (a
process per backend: Keras picks its backend once). It imports no
TensorFlow on JAX and PyTorch, and writes to the folder OUT (the oracle
matrix and the other hand computations of `tests/core` run on each backend
directly: `make test`):

- `twins.json`: rho = 0 twins against `keras.Model` on this backend (the
  drop-in rule): functional, Sequential, subclass and `from_model`, with
  dropout and BatchNorm, two epochs; bit-exact weights, History,
  evaluate, predict;
- `refusals.json`: the message of each option the backend refuses;
- `policies.npz` + `policies.json`: the options that keep state between
  steps (cheap SAMs, Momentum-SAM, a kept mask), four steps each;
- `saved.keras`: a trained SAMModel; with LOAD, the `.keras` file another
  backend saved is loaded and trained one more epoch here;
- `files.json`: rho from `RhoScheduler`, a `.keras` round trip of
  the SAM config;
- `tuner.json`: `keras_sam.grid_search` (KerasTuner) over two rho;
- `callbacks.json`: a BackupAndRestore resume, NoiseMonitor's logs, and
  training under the mixed precision policies.
"""

import json
import os
import sys

import keras
import numpy as np

import keras_sam
from tests import matrix_cases

REFUSED_OPTIONS = {
    "synced_statistics": {"sync_moving_statistics": True},
}
# The options that keep state between steps, trained four steps (compared
# with TensorFlow's step, which `tests/core/test_policy.py` checks).
POLICIES = {
    "sam_every2": {"sam_every": 2},
    "late_phase": {"sam_from": 2},
    "ae_sam": {"trigger": "adaptive"},
    "looksam": {"sam_every": 2, "off_step": "looksam"},
    "momentum": {"perturbation": "momentum"},
    "kept_mask": {"perturbed_fraction": 0.3, "mask_update_every": 2},
    "m2_every2": {"m": 2, "sam_every": 2},
}


def numpy(variables) -> list:
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables]


def policy_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 5)).astype("float32")
    return x, rng.integers(0, 3, size=32).astype("int32")


def policy_model(options):
    """The Dense family of the matrix with `options`, SGD with momentum."""
    model = keras_sam.SAMModel(*matrix_cases.FAMILIES["dense"].graph(),
                               rho=matrix_cases.RHO, **options)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=keras.backend.backend() == "jax",
    )
    return model


def train_policy(model):
    """Four steps of 8 examples; the last epoch's logs."""
    x, y = policy_data()
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False,
                        verbose=0)
    return {k: float(v[-1]) for k, v in history.history.items()}


def run_policies(out):
    arrays, logs = {}, {}
    for name, options in POLICIES.items():
        keras.utils.set_random_seed(0)
        model = policy_model(options)
        for i, value in enumerate(numpy(model.trainable_variables)):
            arrays[f"{name}/initial/{i}"] = value
        logs[name] = train_policy(model)
        for i, value in enumerate(numpy(model.trainable_variables)):
            arrays[f"{name}/trained/{i}"] = value
    np.savez(os.path.join(out, "policies.npz"), **arrays)
    with open(os.path.join(out, "policies.json"), "w") as f:
        json.dump(logs, f)


# ------------------------------------------------------------------ twins


def _layers(seed=3):
    """Dense, BatchNorm, Dropout (unseeded with `seed=None`: PyTorch then
    draws from its global generator), Dense."""
    return [
        keras.layers.Dense(8, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.3, seed=seed),
        keras.layers.Dense(3),
    ]


def _subclass_of(base):
    """A subclass of `base` that calls `_layers()` in turn."""

    class Net(base):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.stack = _layers()

        def call(self, x, training=False):
            for layer in self.stack:
                x = layer(x, training=training)
            return x

    return Net


_Net = _subclass_of(keras.Model)
_SAMNet = _subclass_of(keras_sam.SAMModel)


def _functional(sam, seed=3):
    inputs = keras.Input((4,))
    x = inputs
    for layer in _layers(seed):
        x = layer(x)
    if sam:
        return keras_sam.SAMModel(inputs, x, rho=0.0)
    return keras.Model(inputs, x)


BUILDS = {
    "functional": _functional,
    "unseeded_dropout": lambda sam: _functional(sam, seed=None),
    "sequential": lambda sam: _wrap(
        keras.Sequential([keras.Input((4,)), *_layers()]), sam),
    "lazy_sequential": lambda sam: _wrap(keras.Sequential(_layers()), sam),
    "subclass": lambda sam: _SAMNet(rho=0.0) if sam else _Net(),
    "from_subclass": lambda sam: _wrap(_Net(), sam),
}


def _wrap(model, sam):
    return keras_sam.SAMModel.from_model(model, rho=0.0) if sam else model


def _twin_run(build, sam, x, y):
    keras.utils.set_random_seed(11)
    model = build(sam)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False,
                        verbose=0)
    logs = {k: v for k, v in history.history.items()
            if k not in ("rho", "grad_norm", "sharpness")}
    return {
        "weights": numpy(model.weights),
        "history": logs,
        "sam_keys": sorted(set(history.history) - set(logs)),
        "evaluate": model.evaluate(x, y, verbose=0, return_dict=True),
        "predict": np.asarray(model.predict(x, verbose=0)),
    }


def run_twins(out):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype("float32")  # 16 + 16 + 8
    y = rng.integers(0, 3, size=40).astype("int32")
    report = {}
    for name, build in BUILDS.items():
        plain, sam = (_twin_run(build, s, x, y) for s in (False, True))
        weights = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(plain["weights"], sam["weights"])
        )
        report[name] = {
            "weights_max_diff": weights,
            "history_equal": plain["history"] == sam["history"],
            "evaluate_equal": plain["evaluate"] == sam["evaluate"],
            "predict_equal": bool(np.array_equal(plain["predict"],
                                                 sam["predict"])),
            "sam_keys": sam["sam_keys"],
            "history": [plain["history"], sam["history"]],
        }
    with open(os.path.join(out, "twins.json"), "w") as f:
        json.dump(report, f)


# ------------------------------------------------------- refusals, files


def run_refusals(out):
    report = {}
    for name, options in REFUSED_OPTIONS.items():
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(3)(inputs)
        try:
            keras_sam.SAMModel(inputs, outputs, **options)
            report[name] = None
        except ValueError as error:
            report[name] = str(error)
    with open(os.path.join(out, "refusals.json"), "w") as f:
        json.dump(report, f)


def data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def run_files(out, load):
    x, y = data()
    report = {}
    if load:  # another backend's file: load, train on
        model = keras.models.load_model(load)
        report["loaded_class"] = type(model).__name__
        report["loaded_config"] = model.get_sam_config()
        before = numpy(model.trainable_variables)
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        report["loaded_history"] = history.history
        report["loaded_moved"] = any(
            not np.array_equal(a, b)
            for a, b in zip(before, numpy(model.trainable_variables))
        )
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras_sam.SAMModel(
        inputs, keras.layers.Dense(2)(hidden), rho=0.1, m=4, adaptive=True
    )
    model.compile(optimizer="adam", loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    schedule = keras_sam.RhoScheduler(lambda epoch: 0.1 * (epoch + 1))
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0,
                        callbacks=[schedule])
    report["scheduled_rho"] = history.history["rho"]
    report["rho_after"] = float(keras.ops.convert_to_numpy(model.rho))
    path = os.path.join(out, "saved.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    report["reloaded_config"] = reloaded.get_sam_config()
    report["reloaded_predict_equal"] = bool(np.array_equal(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0)))
    with open(os.path.join(out, "files.json"), "w") as f:
        json.dump(report, f)


def run_tuner(out):
    """KerasTuner's grid over rho (`keras_sam.grid_search`), two trials."""
    import tempfile

    def build():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", metrics=["accuracy"], loss=keras.
                      losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    x, y = data()
    result = keras_sam.grid_search(
        build, x, y, directory=tempfile.mkdtemp(), rho_values=[0.05, 0.1],
        epochs=1, batch_size=8, verbose=0,
    )
    with open(os.path.join(out, "tuner.json"), "w") as f:
        json.dump({"trials": len(result.trials),
                   "best_rho": result.best_rho}, f)


def _small_sam(seed=7, rho=0.1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras_sam.SAMModel(inputs, keras.layers.Dense(2)(hidden),
                               rho=rho)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=["accuracy"])
    return model


class _Interrupt(keras.callbacks.Callback):
    """Stops a run after its first epoch, as a killed job would."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("interrupted")


def run_callbacks(out):
    """Keras' BackupAndRestore (a run interrupted after its first epoch
    resumes to the uninterrupted weights, momentum and rho), NoiseMonitor's
    logs, and the mixed precision policies."""
    import tempfile

    from keras_sam.callbacks import NoiseMonitor
    from keras_sam.noise import symmetric_noise

    x, y = data()
    fit = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    schedule = lambda: keras_sam.RhoScheduler(lambda e: 0.1 * (e + 1))
    straight = _small_sam()
    straight.fit(x, y, callbacks=[schedule()], **fit)
    directory = tempfile.mkdtemp()
    try:
        _small_sam().fit(x, y, callbacks=[
            keras.callbacks.BackupAndRestore(directory), schedule(),
            _Interrupt()], **fit)
    except RuntimeError:
        pass
    resumed = _small_sam(seed=8)  # other initial weights: restored
    resumed.fit(x, y, callbacks=[
        keras.callbacks.BackupAndRestore(directory), schedule()], **fit)
    report = {
        "resumed_max_difference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(
                numpy(straight.variables + straight.optimizer.variables),
                numpy(resumed.variables + resumed.optimizer.variables))),
        "resumed_rho": float(keras.ops.convert_to_numpy(resumed.rho)),
    }
    noisy = symmetric_noise(y, 0.25, seed=1)
    monitored = _small_sam()
    history = monitored.fit(
        x, noisy.labels, batch_size=8, epochs=2, verbose=0,
        callbacks=[NoiseMonitor(x, noisy, test_data=(x, y))])
    report["noise_logs"] = {
        k: v for k, v in history.history.items()
        if k.startswith(("train_", "test_", "best_"))}
    float32 = _small_sam()
    float32.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for policy in ("mixed_float16", "mixed_bfloat16"):
        keras.mixed_precision.set_dtype_policy(policy)
        try:
            model = _small_sam()
            history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        report[policy] = {
            "loss": history.history["loss"],
            "optimizer": type(model.optimizer).__name__,
            "weight_dtypes": sorted({v.dtype for v in model.weights}),
            "max_difference_from_float32": max(
                float(np.max(np.abs(a - b))) for a, b in zip(
                    numpy(model.trainable_variables),
                    numpy(float32.trainable_variables))),
        }
    with open(os.path.join(out, "callbacks.json"), "w") as f:
        json.dump(report, f)


def main(argv):
    out = argv[1]
    load = argv[2] if len(argv) > 2 else None
    os.makedirs(out, exist_ok=True)
    run_refusals(out)
    run_files(out, load)
    run_tuner(out)
    run_callbacks(out)
    run_policies(out)
    run_twins(out)
    with open(os.path.join(out, "done.json"), "w") as f:
        json.dump({"backend": keras.backend.backend(),
                   "tensorflow_imported":
                   sys.modules.get("tensorflow") is not None}, f)


if __name__ == "__main__":
    main(sys.argv)
