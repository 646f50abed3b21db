"""End-to-end smoke test of tools/compare_sharpness.py on tiny models."""

import csv
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_sam.model import SAMModel

pytestmark = [
    pytest.mark.slow,  # runs the CLI in a subprocess
    # the diagnostics it reports are tested in tests/diagnostics
    pytest.mark.extended,
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save_models(directory):
    """A plain Keras model and a SAMModel on digits inputs, saved."""
    paths = []
    for name, wrap in (("sgd", False), ("sam", True)):
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
        if wrap:
            model = SAMModel.from_model(model, rho=0.1)
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        path = os.path.join(directory, f"{name}.keras")
        model.save(path)
        paths.append(path)
    return paths


def test_cli_writes_table_plots_and_grids(tmp_path):
    model_a, model_b = _save_models(str(tmp_path))
    output_dir = tmp_path / "out"
    command = [
        sys.executable, os.path.join(ROOT, "tools", "compare_sharpness.py"),
        f"--model_a={model_a}", f"--model_b={model_b}",
        f"--output_dir={output_dir}", "--max_examples=40",
        "--lanczos_iters=6", "--probes=3", "--m=8", "--grid_points=3",
        "--interp_points=3", "--noise_rate=0.4", "--verbose=0",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lambda_max" in result.stdout
    with open(output_dir / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["sgd", "sam"]
    for row in rows:
        for column in ("loss", "lambda_max", "trace", "m_sharpness"):
            assert np.isfinite(float(row[column]))
        assert float(row["lambda_max"]) > 0
    expected = [
        "interpolation.png", "interpolation.npz", "interpolation.csv",
        "slice_1d.png", "slice_1d.csv",
        "contour_sgd.png", "surface_sgd.png", "surface_sgd.npz",
        "contour_sam.png", "surface_sam.png", "surface_sam.csv",
    ]
    for name in expected:
        assert (output_dir / name).stat().st_size > 0, name
    with np.load(output_dir / "surface_sam.npz") as grid:
        assert grid["losses"].shape == (3, 3)

