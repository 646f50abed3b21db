"""ASAM adapts what the official code adapts, against a hand computation."""

import keras
import numpy as np
import pytest

import keras_sam
from tests import autodiff
from tests import oracle

RHO, ETA, LEARNING_RATE = 0.5, 0.01, 0.1


def layer_norm_net(model_class, **kwargs):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="tanh")(inputs)
    hidden = keras.layers.LayerNormalization()(hidden)
    outputs = keras.layers.Dense(3)(hidden)
    model = model_class(inputs, outputs, **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def gradient(model, x, y):
    """The plain keras.Model's gradient at its current weights (its loss:
    mean cross-entropy of the logits, no regulariser)."""
    state = [v.value for v in model.non_trainable_variables]

    def loss(weights):
        logits, _ = model.stateless_call(weights, state, x, training=True)
        return oracle.data_loss(y, logits)

    weights = [v.value for v in model.trainable_variables]
    return [oracle.numpy(g) for g in autodiff.grad(loss, weights)]


@pytest.mark.parametrize("adapt_normalization", [True, False])
def test_asam_adapts_kernels_and_norm_scales_not_offsets(adapt_normalization):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.integers(0, 3, size=8).astype("int32")
    sam = layer_norm_net(
        keras_sam.SAMModel,
        rho=RHO,
        adaptive=True,
        eta=ETA,
        adapt_normalization=adapt_normalization,
    )
    plain = layer_norm_net(keras.Model)
    plain.set_weights(sam.get_weights())
    w = [oracle.numpy(v) for v in plain.trainable_variables]
    names = [v.name for v in plain.trainable_variables]
    adapted = {"kernel"} | ({"gamma"} if adapt_normalization else set())
    assert set(names) == {"kernel", "bias", "gamma", "beta"}
    # Kwon et al. eq. 10: eps = rho T^2 g / ||T g||, T = |w| + eta on the
    # adapted weights (the official code: PyTorch parameters named
    # "weight", i.e. kernels and normalisation scales), 1 elsewhere.
    t = [np.abs(wi) + ETA if n in adapted else np.ones_like(wi)
         for wi, n in zip(w, names)]
    g = gradient(plain, x, y)
    norm = np.sqrt(sum(np.sum((ti * gi) ** 2) for ti, gi in zip(t, g)))
    eps = [RHO * ti**2 * gi / norm for ti, gi in zip(t, g)]
    for variable, wi, ei in zip(plain.trainable_variables, w, eps):
        variable.assign(wi + ei)
    g_sam = gradient(plain, x, y)
    expected = [wi - LEARNING_RATE * gi for wi, gi in zip(w, g_sam)]
    sam.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    for actual, want in zip(sam.trainable_variables, expected):
        np.testing.assert_allclose(oracle.numpy(actual), want, atol=1e-6)


def test_a_model_as_positional_argument_points_to_from_model():
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="SAMModel.from_model"):
        keras_sam.SAMModel(base)
