"""Smoke tests of tools/benchmark.py: it runs and writes one row per method.

Timings depend on the machine and are never asserted. Every test runs the
tool in a subprocess (it picks the Keras backend before importing Keras).
"""

import ast
import csv
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # runs the CLI in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "benchmark.py")


def methods_of_the_tool():
    """The keys of `METHODS` in tools/benchmark.py, read without importing."""
    with open(TOOL) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "METHODS" for t in node.targets
        ):
            return [ast.literal_eval(key) for key in node.value.keys]
    raise AssertionError("tools/benchmark.py defines no METHODS dict")


def run_command(*flags, timeout=300):
    command = [sys.executable, TOOL, *flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout
    )


def run_tool(tmp_path, *flags):
    output = tmp_path / "bench.csv"
    result = run_command(f"--output_csv={output}", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output) as f:
        return result.stdout, list(csv.DictReader(f))


def assert_finite(row, *columns):
    for column in columns:
        assert math.isfinite(float(row[column])), (row["method"], column)


def test_smoke_runs_a_few_methods(tmp_path):
    # End to end on TensorFlow: a few methods built, traced, stepped, timed.
    stdout, rows = run_tool(
        tmp_path, "--smoke", "--nojit", "--methods=sgd,sam,sam_m4,sam_1"
    )
    assert [row["method"] for row in rows] == ["sgd", "sam", "sam_m4", "sam_1"]
    groups = {row["method"]: int(row["groups"]) for row in rows}
    assert groups["sam"] == 1 and groups["sam_m4"] == 4
    assert groups["sam_1"] == 16  # the smoke batch
    for row in rows:
        assert row["model"] == "mlp" and row["device"] == "CPU:0"
        assert row["backend"] == "tensorflow" and row["jit"] == "False"
        assert_finite(row, "median_ms_per_step", "ratio_to_sgd",
                      "step_peak_mb", "first_call_s", "warmup_s")
        assert f"| {row['method']} |" in stdout
    assert float(rows[0]["ratio_to_sgd"]) == 1.0
    assert float(rows[0]["extra_mb_vs_sgd"]) == 0.0


def assert_every_method_said(stdout, backend, methods):
    """Each method is said once: built, or skipped as refused."""
    lines = stdout.splitlines()
    for method in methods:
        said = [
            line for line in lines
            if line.startswith((f"built on {backend}: {method} (",
                                f"skipped on {backend}: {method} ("))
        ]
        assert len(said) == 1, (method, stdout[-3000:])
    assert "| sgd |" not in stdout  # no step ran


@pytest.mark.extended  # more of what the smoke test checks
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_dry_run_builds_every_method(backend):
    # Every METHODS entry is built and compiled, or reported as refused by
    # the backend; no step runs (cheap, unlike tracing 19 steps). JAX's is
    # test_a_method_the_backend_refuses[default].
    result = run_command(f"--backend={backend}", "--dry_run")
    assert result.returncode == 0, result.stderr[-3000:]
    methods = methods_of_the_tool()
    assert {"sgd", "sam", "sam_m4", "sam_1"} <= set(methods)
    assert_every_method_said(result.stdout, backend, methods)
    if backend == "tensorflow":  # its step has every option
        assert "skipped" not in result.stdout


@pytest.mark.extended  # more of what the smoke test checks
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_smoke_on_another_backend(tmp_path, backend):
    stdout, rows = run_tool(
        tmp_path, f"--backend={backend}", "--smoke", "--methods=sgd,sam"
    )
    assert f"backend={backend} " in stdout
    assert [row["method"] for row in rows] == ["sgd", "sam"]
    for row in rows:
        assert row["backend"] == backend and row["strategy"] == "default"
        # Keras' jit_compile="auto": XLA on JAX, no torch.compile.
        assert row["jit"] == str(backend == "jax")
        assert_finite(row, "median_ms_per_step", "ratio_to_sgd",
                      "ratio_to_sam", "first_call_s", "warmup_s")
        if row["device"] == "CPU:0":  # no peak memory to report
            assert math.isnan(float(row["step_peak_mb"]))
    assert float(rows[0]["ratio_to_sgd"]) == 1.0


@pytest.mark.extended  # more of what the smoke test checks
def test_smoke_under_a_mirrored_strategy(tmp_path):
    _, rows = run_tool(
        tmp_path, "--smoke", "--nojit", "--model=cnn", "--strategy=mirrored",
        "--logical_cpus=2", "--methods=sgd,sam_m4",
    )
    assert [row["method"] for row in rows] == ["sgd", "sam_m4"]
    for row in rows:
        assert row["replicas"] == "2" and row["strategy"] == "mirrored"
    assert rows[1]["groups"] == "4"  # 8 examples per replica, m = 2


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--methods=sgd,adamw_sam"], ["adamw_sam"]),
        (["--backend=torch", "--strategy=mirrored"],
         ["--strategy", "--backend=torch"]),
    ],
    ids=["unknown_method", "strategy_on_torch"],
)
def test_usage_errors(flags, words):
    result = run_command(*flags, timeout=120)
    assert result.returncode != 0
    for word in words:
        assert word in result.stderr, (word, result.stderr[-2000:])
    assert "| sgd |" not in result.stdout  # refused before any training


# The tool with one more method, `sam_synced_bn`, whose option keras_sam
# refuses off TensorFlow (averaging BatchNorm statistics across
# tf.distribute replicas); no METHODS entry is refused on JAX today.
WITH_A_REFUSED_METHOD = """
import importlib.util, sys
from absl import app
spec = importlib.util.spec_from_file_location("benchmark", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
tool.METHODS["sam_synced_bn"] = {"sync_moving_statistics": True}
app.run(tool.main, argv=sys.argv[1:])
"""


@pytest.mark.parametrize("named", [True, False], ids=["named", "default"])
def test_a_method_the_backend_refuses(named):
    # Named in --methods: a usage error that names the method and the
    # backend. Not named: skipped, with keras_sam's reason.
    command = [sys.executable, "-c", WITH_A_REFUSED_METHOD, TOOL,
               "--backend=jax", "--dry_run"]
    if named:
        command.append("--methods=sgd,sam_synced_bn")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT,
               KERAS_BACKEND="jax")
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120
    )
    if named:
        assert result.returncode != 0
        for word in ("--methods=sam_synced_bn", "--backend=jax",
                     "sync_moving_statistics=True"):
            assert word in result.stderr, (word, result.stderr[-2000:])
        assert "built on" not in result.stdout  # refused before building
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "skipped on jax: sam_synced_bn (sync_moving_statistics=True" \
            in result.stdout
        methods = methods_of_the_tool() + ["sam_synced_bn"]
        assert_every_method_said(result.stdout, "jax", methods)
