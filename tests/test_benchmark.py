"""Smoke tests of tools/benchmark.py: it runs and writes one row per method.

Timings depend on the machine and are never asserted.
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


def run_tool(tmp_path, *flags):
    output = tmp_path / "bench.csv"
    command = [sys.executable, TOOL, f"--output_csv={output}", *flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output) as f:
        return result.stdout, list(csv.DictReader(f))


def test_smoke_runs_every_method(tmp_path):
    stdout, rows = run_tool(tmp_path, "--smoke", "--nojit")
    methods = methods_of_the_tool()
    assert {"sgd", "sam", "sam_m4", "sam_1"} <= set(methods)
    assert [row["method"] for row in rows] == methods
    groups = {row["method"]: int(row["groups"]) for row in rows}
    assert groups["sam"] == 1 and groups["sam_m4"] == 4
    assert groups["sam_1"] == 16  # the smoke batch
    for row in rows:
        assert row["model"] == "mlp" and row["device"] == "CPU:0"
        for column in ("median_ms_per_step", "ratio_to_sgd", "step_peak_mb"):
            assert math.isfinite(float(row[column])), (row["method"], column)
    by_method = {row["method"]: row for row in rows}
    assert float(by_method["sgd"]["ratio_to_sgd"]) == 1.0
    assert float(by_method["sgd"]["extra_mb_vs_sgd"]) == 0.0
    for method in methods:
        assert f"| {method} |" in stdout


def test_smoke_under_a_mirrored_strategy(tmp_path):
    _, rows = run_tool(
        tmp_path, "--smoke", "--nojit", "--model=cnn", "--strategy=mirrored",
        "--logical_cpus=2", "--methods=sgd,sam_m4",
    )
    assert [row["method"] for row in rows] == ["sgd", "sam_m4"]
    for row in rows:
        assert row["replicas"] == "2" and row["strategy"] == "mirrored"
    assert rows[1]["groups"] == "4"  # 8 examples per replica, m = 2


def test_unknown_method_is_a_usage_error():
    command = [sys.executable, TOOL, "--methods=sgd,adamw_sam"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode != 0
    assert "adamw_sam" in result.stderr
