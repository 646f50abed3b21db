"""Tests for experiments/models.py: parameter counts against the papers."""

import keras
import numpy as np
import pytest

from experiments import models


def _layers(model):
    return list(model._flatten_layers(include_self=False))


@pytest.mark.parametrize(
    "name, kwargs, exact, published",
    [
        # Zagoruyko and Komodakis 2016, table 1: WRN-28-10 has 36.5M.
        ("wrn", {"depth": 28, "width": 10}, 36_479_194, 36.5e6),
        # He et al. 2016, table 6: ResNet-32 has 0.46M.
        ("resnet32", {}, 464_154, 0.46e6),
        # ResNet-18 for 32x32 inputs: 11.2M (11,173,962 with BatchNorm).
        ("resnet18_ln", {}, 11_173_962, 11.2e6),
        ("resnet18_ln", {"norm": "batch"}, 11_173_962, 11.2e6),
    ],
)
def test_published_parameter_counts(name, kwargs, exact, published):
    model = models.build(name, (32, 32, 3), 10, **kwargs)
    count = models.count_trainable(model)
    assert count == exact
    assert abs(count - published) / published < 0.015


def test_small_models_counts():
    # 64*128+128 + 128*128+128 + 128*10+10 = 26,122.
    assert models.count_trainable(models.build("mlp", (64,), 10)) == 26_122
    # LayerNorm MLP: no biases before the norms, 2 x 128 norm parameters.
    ln = models.build("mlp_ln", (64,), 10)
    assert models.count_trainable(ln) == 64 * 128 + 256 + 128 * 128 + 256 + (
        128 * 10 + 10
    )
    assert any(isinstance(l, keras.layers.LayerNormalization)
               for l in _layers(ln))


@pytest.mark.parametrize(
    "name, shape, kwargs",
    [
        ("mlp", (64,), {}),
        ("mlp_ln", (8, 8, 1), {"hidden_units": 16}),
        ("small_cnn", (8, 8, 1), {"filters": 4}),
        ("wrn", (16, 16, 3), {"depth": 10, "width": 1}),
        ("resnet32", (16, 16, 3), {"depth": 8}),
    ],
)
def test_builders_output_logits(name, shape, kwargs):
    model = models.build(name, shape, 7, **kwargs)
    out = model(np.random.rand(3, *shape).astype("float32"), training=False)
    assert out.shape == (3, 7) and keras.backend.standardize_dtype(
        out.dtype) == "float32"
    assert isinstance(model.layers[-1], keras.layers.Dense)  # eq. 4.5's v


def test_layernorm_resnet18_has_no_batchnorm():
    model = models.resnet18((32, 32, 3), 10)
    layers = _layers(model)
    assert not any(isinstance(l, keras.layers.BatchNormalization)
                   for l in layers)
    groups = [
        l for l in layers if isinstance(l, keras.layers.GroupNormalization)
    ]
    assert len(groups) == 20 and all(l.groups == 1 for l in groups)


def test_input_normalisation():
    mean, std = np.array([10.0, 20.0, 30.0]), np.array([2.0, 4.0, 5.0])
    model = models.build("small_cnn", (4, 4, 3), 2, mean=mean, std=std,
                         filters=2)
    layer = model.get_layer("normalise")
    x = np.random.rand(2, 4, 4, 3).astype("float32") * 50
    np.testing.assert_allclose(
        layer(x).numpy(), (x - mean) / std, rtol=1e-5, atol=1e-5
    )


def test_zero_pad_shortcut():
    layer = models.ZeroPadShortcut(8)
    x = np.arange(2 * 4 * 4 * 2, dtype="float32").reshape(2, 4, 4, 2)
    out = layer(x).numpy()
    assert out.shape == (2, 2, 2, 8)
    np.testing.assert_array_equal(out[..., 3:5], x[:, ::2, ::2, :])
    assert not out[..., :3].any() and not out[..., 5:].any()


@pytest.mark.parametrize("name, depth", [("wrn", 27), ("resnet32", 33)])
def test_bad_depth_raises(name, depth):
    with pytest.raises(ValueError, match="depth"):
        models.build(name, (32, 32, 3), 10, depth=depth)


def test_unknown_model_raises():
    with pytest.raises(ValueError, match="Unknown model"):
        models.build("vgg", (32, 32, 3), 10)
