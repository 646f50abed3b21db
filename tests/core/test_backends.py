"""The algorithm half of SAM's step runs on TensorFlow, JAX and PyTorch.

`keras_sam.core.step` and `keras_sam.core.perturbation` are written in
`keras.ops`: each backend (a fresh process per `KERAS_BACKEND`, see
`tests/core/backend_step.py`) takes the same descent gradients, equal to a
NumPy hand computation and to each other. `SAMModel` on each backend is
checked end to end by `tests/test_cross_backend.py`.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.core import backend_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BACKENDS = ("tensorflow", "jax", "torch")  # each also its package's name

pytestmark = pytest.mark.slow  # one subprocess per backend


@functools.lru_cache(maxsize=None)
def run_on(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-m", "tests.core.backend_step"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout)
    assert results["backend"] == backend
    return results


def gradient(weights, x, y):
    """d/dw mean((x W + b - y)^2), by hand."""
    kernel, bias = weights
    residual = x @ kernel + bias - y
    scale = 2.0 / residual.size
    return [scale * x.T @ residual, scale * residual.sum(axis=0)]


def hand_sam(name):
    weights, x, y = backend_step.problem()
    weights = [w.astype(np.float64) for w in weights]
    x, y = x.astype(np.float64), y.astype(np.float64)
    g = gradient(weights, x, y)
    rho = backend_step.RHO
    flat = np.concatenate([t.ravel() for t in g])
    if name == "sam":
        eps = [rho * t / np.linalg.norm(flat) for t in g]
    elif name == "p_inf":
        eps = [rho * np.sign(t) for t in g]
    elif name == "asam":  # T = |kernel| + eta, 1 for the bias
        scale = [np.abs(weights[0]) + 0.01, np.ones_like(weights[1])]
        tg = [s * t for s, t in zip(scale, g)]
        norm = np.linalg.norm(np.concatenate([t.ravel() for t in tg]))
        eps = [s * rho * t / norm for s, t in zip(scale, tg)]
    else:
        raise ValueError(name)
    return gradient([w + e for w, e in zip(weights, eps)], x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["sam", "p_inf", "asam"])
def test_descent_gradient_matches_the_hand_computation(backend, name):
    actual = run_on(backend)[name]["grads"]
    for a, e in zip(actual, hand_sam(name)):
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("name", sorted(backend_step.VARIANTS))
def test_backend_agrees_with_tensorflow(backend, name):
    expected = run_on("tensorflow")[name]
    actual = run_on(backend)[name]
    for a, e in zip(actual["grads"], expected["grads"]):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        actual["loss_perturbed"], expected["loss_perturbed"], rtol=1e-5
    )
