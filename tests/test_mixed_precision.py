"""SAMModel under mixed precision: float16 with loss scaling, and bfloat16.

Under "mixed_float16" `compile` wraps the optimizer in a
`LossScaleOptimizer`; SAMModel scales both passes' losses, computes the
ascent norm in float32 (so a scaled gradient whose square overflows float16
still gives the right eps), turns a non-finite ascent gradient into eps = 0,
and leaves a non-finite final gradient to the LossScaleOptimizer, which
halves its scale and skips the update, as Keras documents.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sam.core import perturbation
from tests import reference
from tests.helpers import LEARNING_RATE
from tests.helpers import assert_weights_close
from tests.helpers import build
from tests.helpers import initial_weights
from tests.helpers import max_difference
from tests.helpers import weights_of

RHO = 0.5
FLOAT16_MAX = float(np.finfo(np.float16).max)


@pytest.fixture
def policy(request):
    """Sets the global dtype policy for one test, then restores float32."""
    keras.mixed_precision.set_dtype_policy(request.param)
    yield request.param
    keras.mixed_precision.set_dtype_policy("float32")


def global_norm(tensors):
    return float(np.sqrt(sum(np.sum(np.square(t)) for t in tensors)))


@pytest.mark.parametrize(
    "policy, atol",
    [("mixed_float16", 1e-4), ("mixed_bfloat16", 1e-3)],
    indirect=["policy"],
)
def test_one_step_matches_float32_sam(policy, atol):
    x, y = reference.tiny_data()
    model = build(rho=RHO, float32_outputs=True)
    assert model.layers[1].compute_dtype == policy.split("_")[1]
    logs = model.fit(x, y, batch_size=8, shuffle=False, verbose=0).history
    wrapped = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert wrapped == (policy == "mixed_float16")

    w0 = initial_weights()
    g = reference.gradient(w0, x, y)
    sam = reference.sgd_update(
        w0, reference.sam_gradient(w0, x, y, RHO), LEARNING_RATE
    )
    assert_weights_close(weights_of(model), sam, atol=atol)
    # SAM, not the base step: eps was not zeroed by an overflowing norm.
    sgd = reference.sgd_update(w0, g, LEARNING_RATE)
    assert max_difference(sam, sgd) > 3 * atol
    # grad_norm is the true (unscaled) norm ...
    np.testing.assert_allclose(logs["grad_norm"][0], global_norm(g),
                               rtol=1e-2)
    if wrapped:
        # ... although the scaled gradient's squared norm is far beyond
        # float16's range: the norm has to be taken in float32.
        scale = model.optimizer.initial_scale
        assert (scale * global_norm(g)) ** 2 > 1000 * FLOAT16_MAX


def test_dual_vector_of_float16_gradients_takes_the_norm_in_float32():
    g = np.array([[300.0, -400.0], [1200.0, 0.0]], np.float16)  # g^2 > max
    eps = perturbation.dual_vector([tf.constant(g)], 0.5, 2.0)[0]
    assert eps.dtype == tf.float32
    expected = 0.5 * g.astype(np.float64) / np.linalg.norm(g.astype(float))
    np.testing.assert_allclose(eps.numpy(), expected, rtol=1e-6)


class Recorder(keras.callbacks.Callback):
    """Weights, loss scale and logs after every batch."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.rows.append(
            {
                "weights": weights_of(self.model),
                "scale": float(optimizer.dynamic_scale.numpy()),
                "iterations": int(optimizer.iterations.numpy()),
                "logs": dict(logs),
            }
        )


def overflowing_batches():
    """Four batches of 8; the first one's gradient overflows in float16.

    A sample weight of 1000 leaves the float32 loss finite (~1e3) but makes
    the scaled gradient of the float16 logits ~1000 * 2**15 / 8 > 65504.
    """
    x, y = reference.tiny_data()
    sample_weight = np.ones(32, np.float32)
    sample_weight[:8] = 1000.0
    return np.tile(x, (4, 1)), np.tile(y, 4), sample_weight


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_overflowing_ascent_gives_zero_eps_and_a_skipped_step(policy):
    x, y, sample_weight = overflowing_batches()
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(LEARNING_RATE),
        initial_scale=2.0**15,
        dynamic_growth_steps=2,
    )
    model = build(optimizer=optimizer, rho=RHO, float32_outputs=True)
    recorder = Recorder()
    model.fit(x, y, sample_weight=sample_weight, batch_size=8,
              shuffle=False, verbose=0, callbacks=[recorder])
    first, second, third, fourth = recorder.rows

    # Overflow: eps = 0 (the perturbed loss equals the loss at w, where a
    # NaN eps would give NaN), the update is skipped, the scale halves.
    assert np.isfinite(first["logs"]["loss"])
    assert first["logs"]["sharpness"] == 0.0
    assert_weights_close(first["weights"], initial_weights(), atol=0)
    assert (first["scale"], first["iterations"]) == (2.0**14, 0)

    # The next batch is an ordinary SAM step from the untouched weights,
    # with the gradient unscaled by the halved scale.
    w0 = initial_weights()
    g_sam = reference.sam_gradient(w0, x[8:16], y[8:16], RHO)
    expected = reference.sgd_update(w0, g_sam, LEARNING_RATE)
    assert_weights_close(second["weights"], expected, atol=1e-4)
    assert (second["scale"], second["iterations"]) == (2.0**14, 1)
    # After dynamic_growth_steps finite steps the scale doubles again.
    assert (third["scale"], third["iterations"]) == (2.0**15, 2)
    assert (fourth["scale"], fourth["iterations"]) == (2.0**15, 3)
    assert all(np.isfinite(w).all() for w in fourth["weights"])


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_nan_batch_is_skipped_and_terminate_on_nan_stops(policy):
    x, y = reference.tiny_data(n=24)
    x[9, 1] = np.nan  # second batch
    model = build(rho=RHO, float32_outputs=True)
    recorder = Recorder()
    history = model.fit(
        x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN(), recorder],
    )
    assert len(recorder.rows) == 2 and model.stop_training
    assert np.isnan(history.history["loss"][0])
    # The LossScaleOptimizer skipped the NaN step: the weights are those
    # after the first batch, finite, and the scale was halved.
    first, second = recorder.rows
    assert_weights_close(second["weights"], first["weights"], atol=0)
    assert second["scale"] == first["scale"] / 2


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_epoch_statistics_ignore_a_skipped_overflow_step(policy):
    x, y, sample_weight = overflowing_batches()
    model = build(rho=RHO, float32_outputs=True)
    logs = model.fit(x, y, sample_weight=sample_weight, batch_size=8,
                     shuffle=False, verbose=0).history
    # The first step overflows at the initial scale 2**15, as the first
    # steps of most float16 runs do while the scale calibrates.
    assert np.isfinite(logs["grad_norm"][0])
