"""keras_sam imports on JAX and PyTorch without TensorFlow installed.

Each backend runs in a fresh interpreter (`KERAS_BACKEND` is read once, when
Keras is imported) in which TensorFlow and tf_keras are made absent:
`sys.modules[name] = None` for the top-level names, so that `import` fails
and `importlib.util.find_spec` returns None as for a package that is not
installed (torch._dynamo probes `find_spec("tensorflow")` on import), and a
`sys.meta_path` finder that raises `ModuleNotFoundError` for any
`tensorflow.*` or `tf_keras.*` module. An `__import__` hook records any
keras_sam module that even tries to import them. The child then checks what
must work off TensorFlow (the imports, `StatelessLoss`, `predict` through
`MultiWorkerFix`, whose `_make_function` must pass the JAX trainer's
`concatenate_outputs` on) and that the TensorFlow-only tools fail with a
clear error, and prints a JSON report that the tests below read.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

BACKENDS = ("jax", "torch")

MODULES = (
    "keras_sam",
    "keras_sam.callbacks",
    "keras_sam.datasets",
    "keras_sam.diagnostics",
    "keras_sam.distribution",
    "keras_sam.noise",
    "keras_sam.regularization",
    "keras_sam.schedules",
    "keras_sam.tuning",
)

CHILD = textwrap.dedent("""
    import builtins
    import importlib
    import importlib.abc
    import json
    import sys

    BLOCKED = ("tensorflow", "tf_keras")
    report = {"attempts": [], "imported": {}, "errors": {}}


    def blocked(name):
        return name.split(".")[0] in BLOCKED


    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ModuleNotFoundError(
                    f"No module named {name!r}", name=name
                )
            return None


    sys.meta_path.insert(0, NoTensorFlow())
    for name in BLOCKED:
        sys.modules[name] = None
    original_import = builtins.__import__


    def recording_import(name, globals=None, *args, **kwargs):
        caller = (globals or {}).get("__name__") or ""
        if blocked(name) and caller.startswith("keras_sam"):
            report["attempts"].append(f"{caller}: import {name}")
        return original_import(name, globals, *args, **kwargs)


    builtins.__import__ = recording_import

    for module in MODULES:
        try:
            importlib.import_module(module)
            report["imported"][module] = "ok"
        except Exception as error:  # reported, not raised
            report["imported"][module] = f"{type(error).__name__}: {error}"


    def outcome(key, fn):
        try:
            fn()
            report["errors"][key] = "no error"
        except Exception as error:
            report["errors"][key] = [type(error).__name__, str(error)]


    if all(v == "ok" for v in report["imported"].values()):
        import keras
        import numpy as np

        import keras_sam
        from keras_sam import _optional
        from keras_sam import diagnostics
        from keras_sam import distribution
        from keras_sam import noise

        report["backend"] = keras.backend.backend()
        _optional.check_tensorflow()  # asks nothing of TensorFlow here
        x = np.linspace(0.0, 1.0, 16, dtype="float32").reshape(8, 2)
        y = np.ones((8, 1), "float32")
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        # JAX's trainer passes concatenate_outputs to _make_function when
        # steps_per_execution > 1; PyTorch's takes only 1.
        steps = 2 if report["backend"] == "jax" else 1
        model.compile(loss="mse", optimizer="sgd", steps_per_execution=steps)
        distribution.enable_multi_worker_fit(model)
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        report["predict_shape"] = list(
            model.predict(x, batch_size=2, verbose=0).shape
        )
        report["evaluate"] = float(model.evaluate(x, y, verbose=0))
        loss = diagnostics.StatelessLoss(model)
        trainable, non_trainable = loss.values()
        report["stateless_loss"] = float(
            keras.ops.convert_to_numpy(loss(trainable, non_trainable, x, y))
        )
        report["multi_worker"] = distribution.is_multi_worker(None)
        outcome("m_sharpness",
                lambda: diagnostics.m_sharpness(model, (x, y), m=2))
        outcome("top_hessian_eigenvalues",
                lambda: diagnostics.top_hessian_eigenvalues(model, (x, y)))
        outcome("random_slice_1d",
                lambda: diagnostics.random_slice_1d(model, (x, y)))
        outcome("evaluate_loss",
                lambda: diagnostics.evaluate_loss(model, (x, y)))
        outcome("noisy_dataset",
                lambda: noise.noisy_dataset(None, lambda labels: labels))

        # The tools run on this backend without TensorFlow too (the
        # studies' package imports it only where it is installed).
        import runpy

        argv = sys.argv
        sys.argv = ["benchmark.py", f"--backend={report['backend']}",
                    "--model=mlp", "--methods=sgd,sam", "--dry_run"]
        try:
            runpy.run_path(ROOT + "/tools/benchmark.py", run_name="__main__")
        except SystemExit as exit:
            report["benchmark_exit"] = exit.code
        except Exception as error:  # reported, not raised
            report["benchmark_exit"] = f"{type(error).__name__}: {error}"
        finally:
            sys.argv = argv

    report["tensorflow_modules"] = sorted(
        name for name, module in sys.modules.items()
        if module is not None and blocked(name)
    )
    print("REPORT " + json.dumps(report))
""")


@pytest.fixture(scope="module", params=BACKENDS)
def report(request):
    backend = request.param
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"MODULES = {MODULES!r}\nROOT = {root!r}\n" + CHILD
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KERAS_BACKEND": backend},
    )
    lines = [
        line for line in result.stdout.splitlines()
        if line.startswith("REPORT ")
    ]
    assert result.returncode == 0 and lines, result.stdout + result.stderr
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.slow  # subprocess
def test_every_module_imports_without_tensorflow(report):
    assert report["imported"] == {m: "ok" for m in MODULES}, report
    assert report["tensorflow_modules"] == [], report
    assert report["attempts"] == [], (
        "keras_sam modules tried to import TensorFlow on import (make the "
        f"import lazy): {report['attempts']}"
    )


@pytest.mark.slow  # subprocess
def test_benchmark_runs_without_tensorflow(report):
    assert report.get("benchmark_exit", "not run") in (None, 0), report


@pytest.mark.slow  # subprocess
def test_backend_neutral_parts_run_without_tensorflow(report):
    assert report["predict_shape"] == [8, 1], report
    assert report["stateless_loss"] == pytest.approx(report["evaluate"])
    assert report["multi_worker"] is False


@pytest.mark.slow  # subprocess
@pytest.mark.parametrize("name", [
    "m_sharpness", "top_hessian_eigenvalues", "random_slice_1d",
    "evaluate_loss",
])
def test_tensorflow_only_diagnostics_name_the_backend(report, name):
    kind, message = report["errors"][name]
    assert kind == "RuntimeError", (kind, message)
    assert f"keras_sam.diagnostics.{name}" in message
    assert repr(report["backend"]) in message
    assert "KERAS_BACKEND=tensorflow" in message


@pytest.mark.slow  # subprocess
def test_noisy_dataset_names_the_tensorflow_extra(report):
    kind, message = report["errors"]["noisy_dataset"]
    assert kind == "ImportError", (kind, message)
    assert "noisy_dataset" in message
    assert 'keras_sam[tensorflow-cpu]' in message
