"""`fit`, `evaluate`, `predict` and resume on real MultiWorkerMirroredStrategy.

Two worker processes on localhost (`tests.multiworker`, one CPU each) run
the worker functions below; the tests compare what they saved with SAM
computed by hand here, with plain TensorFlow ops, and with single-process
Keras. One cluster (`trained`, module-scoped) trains every model the
first tests look at; the resume test starts two more (crash, restart), and
the last one runs a study through `experiments.multiworker`.
"""

import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from tests import multiworker

pytestmark = pytest.mark.slow

FEATURES, HIDDEN, CLASSES = 8, 4, 3
EXAMPLES, BATCH = 32, 8  # global batch 8: 4 examples per worker
EVAL_EXAMPLES = 20  # the last eval batch holds 4: 2 per worker
RHO, LR = 0.5, 0.1
RESUME_EPOCHS, CRASH_AT = 3, (1, 2)  # (epoch, batch), 0-based
TARGET = "tests.test_multiworker:"


def make_data():
    rng = np.random.RandomState(0)
    x = rng.normal(size=(EXAMPLES + EVAL_EXAMPLES, FEATURES)).astype("f4")
    y = rng.randint(0, CLASSES, size=len(x)).astype("int32")
    return x[:EXAMPLES], y[:EXAMPLES], x[EXAMPLES:], y[EXAMPLES:]


# ------------------------------------------------- in the worker processes


def _classes():
    import keras

    import keras_sam
    from keras_sam.distribution import MultiWorkerFix

    class MultiWorkerSAM(keras_sam.SAMModel):  # includes MultiWorkerFix
        pass

    class MultiWorkerModel(MultiWorkerFix, keras.Model):
        pass

    return MultiWorkerSAM, MultiWorkerModel


def _build(model_class, strategy, momentum=0.0, **kwargs):
    import keras

    keras.utils.set_random_seed(0)  # same initial weights on every worker
    with strategy.scope():
        inputs = keras.Input((FEATURES,))
        hidden = keras.layers.Dense(HIDDEN, activation="relu")(inputs)
        outputs = keras.layers.Dense(CLASSES)(hidden)
        model = model_class(inputs, outputs, **kwargs)
        model.compile(
            optimizer=keras.optimizers.SGD(LR, momentum=momentum),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return model


def _weights(model, prefix):
    return {f"{prefix}{i}": v.numpy() for i, v in enumerate(model.weights)}


def _train_dataset():
    x, y, _, _ = make_data()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def trained_worker(index, out):
    """Fits SAM, m=2 SAM and plain models; evaluates; one resume baseline."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    sam_class, plain_class = _classes()
    _, _, x_eval, y_eval = make_data()
    # The examples this worker's replica sees at each step, as fit sees them.
    local = [
        strategy.experimental_local_results(x)[0].numpy()
        for x, _ in strategy.experimental_distribute_dataset(_train_dataset())
    ]
    results = {"local_x": np.stack(local)}
    model = _build(sam_class, strategy, rho=RHO)
    results.update(_weights(model, "initial_"))
    model.fit(_train_dataset(), epochs=1, shuffle=False, verbose=0)
    results.update(_weights(model, "sam_"))
    logs = model.evaluate(x_eval, y_eval, batch_size=BATCH, verbose=0,
                          return_dict=True)
    results["eval_loss"] = np.array(logs["loss"])
    results["eval_accuracy"] = np.array(logs["accuracy"])
    results["predict"] = model.predict(x_eval, batch_size=BATCH, verbose=0)
    results.update(_saved_in_scope(model, strategy, index, out))
    plain = _build(plain_class, strategy)
    plain.fit(_train_dataset(), epochs=1, shuffle=False, verbose=0)
    results.update(_weights(plain, "plain_"))
    try:  # refused when fit makes its function, before any collective
        plain.compile(optimizer="sgd", loss=plain.loss, jit_compile=True)
        plain.fit(_train_dataset(), epochs=1, shuffle=False, verbose=0)
    except ValueError as error:
        results["jit_error"] = np.array(str(error))
    try:  # SAM too, though XLA would compile only its gradient pass
        sam_jit = _build(sam_class, strategy, rho=RHO)
        sam_jit.compile(optimizer="sgd", loss=sam_jit.loss, jit_compile=True)
        sam_jit.fit(_train_dataset(), epochs=1, shuffle=False, verbose=0)
    except ValueError as error:
        results["sam_jit_error"] = np.array(str(error))
    try:
        grouped = _build(sam_class, strategy, rho=RHO, m=2)
        grouped.fit(_train_dataset(), epochs=1, shuffle=False, verbose=0)
        results.update(_weights(grouped, "m2_"))
    except Exception as error:  # reported by test_m2_per_worker_groups
        results["m2_error"] = np.array(f"{type(error).__name__}: {error}")
    results.update(_resumable_fit(strategy, index, out, crash=False))
    multiworker.save(out, index, **results)


def _saved_in_scope(model, strategy, index, out):
    """Every saving route inside the scope, then a reload that trains on."""
    import keras

    model.rho.assign(0.25)  # the current value is what is saved
    path = os.path.join(out, "..", f"model{index}.keras")
    results = {}
    with strategy.scope():
        try:
            model.get_config()
            model.to_json()
            model.save(path)
            loaded = keras.models.load_model(
                path, custom_objects={"MultiWorkerSAM": type(model)})
            results.update(_weights(loaded, "loaded_"))
            results["loaded_rho"] = np.array(float(loaded.rho.numpy()))
            loaded.fit(_train_dataset(), epochs=1, shuffle=False, verbose=0)
        except Exception as error:  # reported by its test
            results["save_error"] = np.array(f"{type(error).__name__}: "
                                             f"{error}")
    model.rho.assign(RHO)
    return results


def _resumable_fit(strategy, index, out, crash):
    """SAM + momentum + per-step rho with per-worker BackupAndRestore."""
    import keras

    import keras_sam
    from keras_sam import schedules

    sam_class, _ = _classes()
    model = _build(sam_class, strategy, momentum=0.9, rho=RHO)

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if crash and index == 1 and (self.epoch, batch) == CRASH_AT:
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [
        keras_sam.RhoScheduler(schedules.ExponentialDecay(RHO, 0.2),
                               per="step"),
        # One directory per worker: a shared one fails on a file lock.
        keras.callbacks.BackupAndRestore(
            os.path.join(out, "..", f"backup{index}")),
        Crash(),
    ]
    history = model.fit(_train_dataset(), epochs=RESUME_EPOCHS,
                        shuffle=False, verbose=0, callbacks=callbacks)
    return {
        **_weights(model, "resume_weight_"),
        **{f"resume_optimizer_{i}": v.numpy()
           for i, v in enumerate(model.optimizer.variables)},
        "resume_rho": np.array(float(model.rho.numpy())),
        "resume_epochs_run": np.array(len(history.history["loss"])),
    }


def resume_worker(index, out, crash):
    """The resumable fit alone (crash: worker 1 SIGKILLs itself)."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    multiworker.save(out, index, **_resumable_fit(strategy, index, out, crash))


# ------------------------------------------------------ hand computations


def _forward(weights, x):
    kernel1, bias1, kernel2, bias2 = weights
    return tf.nn.relu(x @ kernel1 + bias1) @ kernel2 + bias2


def _gradient(weights, x, y):
    weights = [tf.constant(w, tf.float64) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        logits = _forward(weights, tf.constant(x, tf.float64))
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    return [g.numpy() for g in tape.gradient(loss, weights)]


def _sam_gradient(weights, x, y):
    """Algorithm 1 on one group: the gradient at w + rho g / ||g||."""
    grads = _gradient(weights, x, y)
    norm = np.sqrt(sum(np.sum(g ** 2) for g in grads)) + 1e-12
    perturbed = [w + RHO * g / norm for w, g in zip(weights, grads)]
    return _gradient(perturbed, x, y)


def _hand_sgd(weights, groups_per_step, gradient):
    """SGD along the mean over groups of `gradient`, one step per item."""
    weights = [w.astype("f8") for w in weights]
    for groups in groups_per_step:
        grads = [gradient(weights, x, y) for x, y in groups]
        mean = [np.mean(g, axis=0) for g in zip(*grads)]
        weights = [w - LR * g for w, g in zip(weights, mean)]
    return weights


def _worker_batches(results):
    """[[(x, y) of worker 0, (x, y) of worker 1] for each step]."""
    x, y, _, _ = make_data()
    steps = []
    for per_worker in zip(*(r["local_x"] for r in results)):
        groups = []
        for local in per_worker:
            rows = [int(np.flatnonzero((x == row).all(1))[0])
                    for row in local]
            groups.append((x[rows], y[rows]))
        steps.append(groups)
    return steps


def _saved(result, prefix, count=4):
    return [result[f"{prefix}{i}"] for i in range(count)]


# -------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "out"
    return multiworker.run_workers(TARGET + "trained_worker", out)


def _max_error(actual, expected):
    return max(float(np.max(np.abs(a - e))) for a, e in zip(actual, expected))


def test_fit_equals_per_worker_hand_sam(trained):
    steps = _worker_batches(trained)
    # DATA sharding: each worker holds half of every global batch.
    assert len(steps) == EXAMPLES // BATCH
    assert all(len(x) == BATCH // 2 for step in steps for x, _ in step)
    initial = _saved(trained[0], "initial_")
    per_worker = _hand_sgd(initial, steps, _sam_gradient)
    whole = [[(np.concatenate([x for x, _ in s]),
               np.concatenate([y for _, y in s]))] for s in steps]
    whole_batch = _hand_sgd(initial, whole, _sam_gradient)
    for result in trained:
        fitted = _saved(result, "sam_")
        assert _max_error(fitted, per_worker) < 1e-5
        assert _max_error(fitted, whole_batch) > 1e-3
    # Plain Keras with the fix: SGD on the mean of the workers' gradients.
    plain = _hand_sgd(initial, steps, _gradient)
    assert _max_error(_saved(trained[0], "plain_"), plain) < 1e-5


def test_jit_compile_on_cpu_workers_is_refused(trained):
    for result in trained:
        for key in ("jit_error", "sam_jit_error"):
            message = str(result[key])
            assert "jit_compile=True" in message
            assert "jit_compile=False" in message


def test_m2_per_worker_groups(trained):
    if "m2_error" in trained[0]:
        pytest.fail(
            "SAMModel(m=2).fit under MWMS failed: the per-replica batch "
            "size is dynamic (None) under MWMS even for a fixed-size "
            "batch, and SAMModel._group_size needs a static one. "
            f"Worker 0: {trained[0]['m2_error']}"
        )
    steps = _worker_batches(trained)
    groups = [[(x[i:i + 2], y[i:i + 2]) for x, y in step for i in (0, 2)]
              for step in steps]
    expected = _hand_sgd(_saved(trained[0], "initial_"), groups,
                         _sam_gradient)
    per_worker = _hand_sgd(_saved(trained[0], "initial_"), steps,
                           _sam_gradient)
    for result in trained:
        assert _max_error(_saved(result, "m2_"), expected) < 1e-5
        assert _max_error(_saved(result, "m2_"), per_worker) > 1e-4


def test_saving_inside_the_scope_and_reloading(trained):
    for result in trained:
        assert "save_error" not in result, str(result["save_error"])
        assert float(result["loaded_rho"]) == 0.25
        assert _max_error(_saved(result, "loaded_"), _saved(result, "sam_")
                          ) == 0


def test_evaluate_and_predict_equal_one_process(trained):
    import keras

    _, _, x_eval, y_eval = make_data()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(HIDDEN, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(hidden))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.set_weights(_saved(trained[0], "sam_"))
    logs = model.evaluate(x_eval, y_eval, batch_size=BATCH, verbose=0,
                          return_dict=True)
    predictions = model.predict(x_eval, batch_size=BATCH, verbose=0)
    for result in trained:
        np.testing.assert_allclose(result["eval_loss"], logs["loss"],
                                   rtol=1e-6)
        assert float(result["eval_accuracy"]) == logs["accuracy"]
        # Gathered from both workers, in the order of the examples.
        np.testing.assert_allclose(result["predict"], predictions,
                                   atol=1e-6)


def test_killed_worker_resumes_to_the_uninterrupted_result(
        trained, tmp_path):
    with multiworker.Workers(TARGET + "resume_worker", tmp_path / "out",
                             crash=True) as workers:
        assert workers.wait(240, indices=[1]) == [-signal.SIGKILL], \
            workers.logs()
        workers.kill(0)  # it waits in a collective for its dead peer
    for index in range(2):
        assert (tmp_path / f"backup{index}" / "latest.weights.h5").exists()
    restarted = multiworker.run_workers(
        TARGET + "resume_worker", tmp_path / "out", crash=False)
    expected = trained[0]
    keys = [k for k in expected if k.startswith("resume_")]
    for result in restarted:
        # Only the epochs after the last backup ran again.
        assert int(result["resume_epochs_run"]) == RESUME_EPOCHS - 1
        for key in keys:
            if key != "resume_epochs_run":
                np.testing.assert_array_equal(result[key], expected[key],
                                              err_msg=key)
    steps = RESUME_EPOCHS * EXAMPLES // BATCH
    np.testing.assert_allclose(expected["resume_rho"],
                               RHO * np.exp(-0.2 * (steps - 1)), rtol=1e-6)
    assert int(expected["resume_optimizer_0"]) == steps  # iterations


def test_experiment_runs_on_two_local_workers(tmp_path):
    from experiments import multiworker as launcher
    from experiments import results

    overrides = [
        "epochs=1", "seeds=(0,)", "train_size=64", "test_size=32",
        "batch_size=16", "noise_rates=(0.4,)", "methods=('sgd','sam')",
        "model_kwargs={'hidden_units': 16}",
    ]
    flags = [f"--workdir={tmp_path}"] + [f"--override={o}" for o in overrides]
    assert launcher.launch("noise_robustness", flags, 2, timeout=400) == [
        0, 0]
    runs = [
        results.read_csv(os.path.join(root, "runs.csv"))
        for root, _, files in os.walk(tmp_path) if "runs.csv" in files
    ]
    assert len(runs) == 2  # the chief's, and worker 1's in worker1/
    chief, other = runs
    assert [r["status"] for r in chief] == ["ok", "ok"]
    for a, b in zip(chief, other):  # the workers trained one model
        assert a["final_test_acc"] == b["final_test_acc"]
