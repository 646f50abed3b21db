"""m-sharpness over JAX devices: under `keras.distribution.DataParallel`
each device perturbs with the gradient of its own shard.

`tests/backend/jax/data_parallel_run.py` runs on 4 JAX CPU devices in a
process of its own. One step under DataParallel equals one step on one
device with m = the per-device batch (whose groups the oracle matrix checks
against the float64 hand computation, `tests/test_cross_backend.py`), and
differs measurably from whole-batch SAM. In the compiled program only the
descent gradient crosses devices: one all-reduce carries the weights'
shapes (whole-batch SAM under DataParallel has two: the ascent gradient's,
before eps, and the descent's), and nothing is all-gathered. Under
`ModelParallel` (kernels split over a "model" axis) each batch shard is
a group likewise.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a JAX process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
WEIGHT_SHAPES = ("f32[5,6]", "f32[6,5]", "f32[6,3]", "f32[3,6]")


@functools.lru_cache(maxsize=None)
def recorded() -> dict:
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    result = subprocess.run(
        [sys.executable, "-m", "tests.backend.jax.data_parallel_run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_each_device_perturbs_with_its_own_shard():
    run = recorded()
    assert run["dp_vs_m4"] < 1e-6
    assert run["dp_vs_whole"] > 1e-2  # m-sharpness is not whole-batch SAM
    assert run["dp_m16_vs_whole"] < 1e-6  # m = the batch: one eps


def test_model_parallel_perturbs_per_batch_shard_with_split_kernels():
    # ModelParallel: the devices that share a batch shard hold parts of
    # each kernel and form one group (m = the per-shard batch, 8).
    run = recorded()
    assert run["mp_kernel_sharding"] == [None, "model"]
    assert run["mp_vs_m8"] < 1e-6
    assert run["mp_vs_whole"] > 1e-2


def weight_reduces(program) -> list:
    return [shapes for shapes in program["all_reduces"]
            if any(s in shapes for s in WEIGHT_SHAPES)]


def test_only_the_descent_gradient_is_reduced_across_devices():
    run = recorded()
    assert len(weight_reduces(run["m_sharpness"])) == 1, run["m_sharpness"]
    assert run["m_sharpness"]["all_gathers"] == 0
    # The check can fail: whole-batch SAM reduces the ascent gradient too.
    assert len(weight_reduces(run["whole"])) == 2, run["whole"]
