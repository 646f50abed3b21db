"""Smoke tests of tools/first_call.py: fresh processes per method, one
table of medians and ratios. Times are printed, never asserted."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # runs the CLI in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "first_call.py")
NUMBER = r"(-?[\d.]+)"
ROW = re.compile(
    rf"^\| (\w+) \| {NUMBER} \| {NUMBER} \| (-?[\d.]+|n/a) \| (.*) \|$")


def table(*flags):
    """{quantity: (keras s, sam s, ratio, runs)} printed by the tool."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, TOOL, "--pairs=1", *flags],
                            capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        match = ROW.match(line)
        if match:
            name, keras_s, sam_s, ratio, runs = match.groups()
            ratio = None if ratio == "n/a" else float(ratio)
            rows[name] = (float(keras_s), float(sam_s), ratio, runs)
    return rows


def check(rows):
    assert list(rows) == ["first_call", "warmup", "second_call", "build"]
    for name, (keras_s, sam_s, ratio, runs) in rows.items():
        if name != "warmup":  # a difference of times, noise can flip it
            assert keras_s > 0 and sam_s > 0, name
        assert (ratio is None) is (keras_s <= 0), name
        if keras_s >= 0.05:  # the ratio of the unrounded times
            # Each time is rounded to 0.01; a warm-up can be negative
            # (a second call slower than the first on a loaded machine).
            corners = [(sam_s + a) / (keras_s + b)
                       for a in (-0.005, 0.005) for b in (-0.005, 0.005)]
            low, high = min(corners) - 0.005, max(corners) + 0.005
            assert low <= ratio <= high, (name, low, ratio, high)
        assert len(runs.split(";")) == 2, runs  # one run of each method
    # With one run each, the warm-up is the first call less the second.
    for i in (0, 1):
        warmup = rows["first_call"][i] - rows["second_call"][i]
        assert rows["warmup"][i] == pytest.approx(warmup, abs=0.011)


def test_unet_on_torch():
    check(table("--model=unet", "--backend=torch"))


@pytest.mark.extended  # the KerasHub model, XLA on TensorFlow
def test_causal_lm_on_tensorflow_with_xla():
    check(table("--model=causal_lm", "--jit"))


def test_a_child_flag_alone_is_refused():
    result = subprocess.run(
        [sys.executable, TOOL, "--child=sam", "--backend=jax"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert result.returncode != 0
    assert "--child" in result.stderr
