"""Tests of keras_sam.diagnostics.landscape and keras_sam.diagnostics.plots."""

import csv
import os

import keras
import numpy as np
import pytest

import keras_sam  # noqa: F401  (registers SAMModel)
from keras_sam.diagnostics import landscape
from keras_sam.diagnostics import plots
from keras_sam.model import SAMModel


def _bn_mlp():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ]
    )


def _compile(model):
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype("float32")
    return x, rng.integers(0, 3, size=30).astype("int32")


@pytest.fixture
def two_models(data):
    """A plain model and a SAMModel of the same architecture, trained apart.

    Both have BatchNormalization, whose moving statistics differ.
    """
    x, y = data
    sgd = _compile(_bn_mlp())
    sam = _compile(SAMModel.from_model(_bn_mlp(), rho=0.1))
    sgd.fit(x, y, batch_size=10, epochs=2, verbose=0)
    sam.fit(x, y, batch_size=10, epochs=2, verbose=0)
    return sgd, sam


def test_interpolation_endpoints_reproduce_evaluate(two_models, data):
    sgd, sam = two_models
    x, y = data
    weights = [m.get_weights() for m in two_models]
    curve = landscape.interpolate(sgd, sam, data, [0.0, 0.5, 1.0],
                                  batch_size=8)
    assert curve.losses[0] == pytest.approx(
        sgd.evaluate(x, y, batch_size=8, verbose=0), rel=1e-6
    )
    assert curve.losses[2] == pytest.approx(
        sam.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)["loss"],
        rel=1e-6,
    )
    for model, before in zip(two_models, weights):
        for b, a in zip(before, model.get_weights()):
            np.testing.assert_array_equal(b, a)


def test_interpolation_of_linear_model_is_analytic():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 3)).astype("float32")
    y = rng.normal(size=(10, 1)).astype("float32")
    a, b = [
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        for _ in range(2)
    ]
    a.compile(loss="mse")
    alphas = [-0.5, 0.25, 1.5]
    curve = landscape.interpolate(a, b, (x, y), alphas)
    wa, ba = a.get_weights()
    wb, bb = b.get_weights()
    expected = [
        np.mean((x @ ((1 - t) * wa + t * wb) + (1 - t) * ba + t * bb - y) ** 2)
        for t in alphas
    ]
    np.testing.assert_allclose(curve.losses, expected, rtol=1e-5)


def test_interpolation_refuses_other_architectures(data):
    a = _compile(_bn_mlp())
    b = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="same architecture"):
        landscape.interpolate(a, b, data, [0.0])


def test_filter_normalisation_matches_weight_filter_norms():
    rng = np.random.default_rng(2)
    weights = [
        rng.normal(size=(3, 3, 2, 4)),  # Conv2D kernel: 4 filters
        rng.normal(size=4),  # its bias
        rng.normal(size=(36, 5)) * 7.0,  # Dense kernel: 5 units
        rng.normal(size=5),  # BatchNormalization gamma
    ]
    direction = landscape.filter_normalized_direction(weights, seed=3)
    for w, d in zip(weights, direction):
        assert d.shape == w.shape
        if w.ndim == 1:
            np.testing.assert_array_equal(d, 0.0)
            continue
        axes = tuple(range(w.ndim - 1))
        np.testing.assert_allclose(
            np.linalg.norm(d.reshape(-1, w.shape[-1]), axis=0),
            np.sqrt(np.sum(w**2, axis=axes)),
            rtol=1e-9,
        )
        assert not np.allclose(d, w)  # a random direction, not w itself
    kept = landscape.filter_normalized_direction(weights, 3, ignore_1d=False)
    np.testing.assert_array_equal(kept[1], weights[1])
    again = landscape.filter_normalized_direction(weights, seed=3)
    np.testing.assert_array_equal(again[0], direction[0])


def test_random_slice_2d_is_analytic_and_stateless():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, 2)).astype("float32")
    y = rng.normal(size=(9, 1)).astype("float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    before = model.get_weights()
    alphas, betas = [-1.0, 0.0, 0.5], [0.0, 2.0]
    surface = landscape.random_slice_2d(
        model, (x, y), alphas, betas, seed=5, batch_size=4
    )
    assert surface.losses.shape == (3, 2)
    # The same directions, drawn independently from the same generator.
    rng = np.random.default_rng(5)
    d1 = landscape.filter_normalized_direction(before, rng)
    d2 = landscape.filter_normalized_direction(before, rng)
    np.testing.assert_array_equal(d1[1], 0.0)  # the bias stays put
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            kernel = before[0] + a * d1[0] + b * d2[0]
            expected = np.mean((x @ kernel + before[1] - y) ** 2)
            assert surface.losses[i, j] == pytest.approx(expected, rel=1e-5)
    for b, a in zip(before, model.get_weights()):
        np.testing.assert_array_equal(b, a)


def test_random_slice_1d_center_is_the_loss(two_models, data):
    sgd, _ = two_models
    x, y = data
    curve = landscape.random_slice_1d(sgd, data, [-0.5, 0.0, 0.5])
    assert curve.losses[1] == pytest.approx(
        sgd.evaluate(x, y, verbose=0), rel=1e-6
    )
    assert curve.losses[0] != pytest.approx(curve.losses[1])


def test_plots_and_files_are_written(tmp_path):
    alphas = np.linspace(-1, 1, 5)
    grid = landscape.Surface(
        alphas, alphas[:4], np.add.outer(alphas**2, alphas[:4] ** 2) + 0.1
    )
    paths = [
        plots.plot_curves(
            str(tmp_path / "line.png"), alphas, {"a": alphas**2}
        ),
        plots.plot_contour(str(tmp_path / "contour.png"), grid),
        plots.plot_surface(str(tmp_path / "surface.png"), grid),
        plots.plot_contour(
            str(tmp_path / "shared.png"), grid, value_range=(0.1, 5.0)
        ),
    ]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    npz, csv_path = plots.save_surface(str(tmp_path / "g"), grid)
    with np.load(npz) as arrays:
        np.testing.assert_array_equal(arrays["losses"], grid.losses)
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["alpha", "beta", "loss"] and len(rows) == 1 + 5 * 4
    assert float(rows[-1][2]) == grid.losses[-1, -1]
    plots.save_curves(str(tmp_path / "c"), alphas, {"a": alphas})
    assert os.path.exists(tmp_path / "c.csv")
