"""Row-sparse gradients (an Embedding's `tf.IndexedSlices`) in SAM's step.

`tape.gradient` lists one row per lookup, so a token used k times is k rows.
The ascent must see each row once with its lookups summed (the norm, the
sign for p = inf, ASAM's scale, Sparse SAM's scores); the hand computations
here densify with `tf.convert_to_tensor`, which sums them.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from keras_sam.core import perturbation
from keras_sam.backend.tensorflow import step as core_tensorflow

RHO = 0.5
# Token 0 is padding, repeated in every row; 3 repeats within and across.
TOKENS = np.array(
    [[3, 3, 3, 1, 0, 0, 0, 0], [3, 2, 0, 0, 0, 0, 0, 0],
     [5, 3, 4, 4, 4, 0, 0, 0], [1, 1, 2, 2, 3, 0, 0, 0]],
    "int32",
)
LABELS = np.array([0, 2, 1, 2])


def text_model(jit_compile=False, **sam_kwargs):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((TOKENS.shape[1],), dtype="int32")
    h = keras.layers.Embedding(8, 4)(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(3)(h)
    model = keras_sam.SAMModel(inputs, outputs, rho=RHO, **sam_kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def tape_gradient(model, weights):
    """The batch gradient at `weights` as the tape gives it (an
    embedding's as `tf.IndexedSlices`, one row per lookup)."""
    weights = [tf.constant(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        y_pred, _ = model.stateless_call(weights, [], TOKENS, training=True)
        loss = model.compute_loss(TOKENS, LABELS, y_pred)
    return tape.gradient(loss, weights)


def dense_gradient(model, weights):
    """The batch gradient at `weights`, densified (duplicates summed)."""
    return [tf.convert_to_tensor(g).numpy()
            for g in tape_gradient(model, weights)]


def hand_sam(model, w, direction):
    g = dense_gradient(model, w)
    eps = direction(g)
    return g, dense_gradient(model, [a + e for a, e in zip(w, eps)])


def l2_direction(g):
    norm = np.sqrt(sum(np.sum(gi.astype("float64") ** 2) for gi in g))
    return [RHO * gi / norm for gi in g]


def sign_direction(g):
    return [RHO * np.sign(gi) for gi in g]


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize(
    "p, direction", [(2.0, l2_direction), (float("inf"), sign_direction)],
    ids=["p2", "pinf"],
)
def test_embedding_step_and_grad_norm_match_hand_sam(p, direction,
                                                     jit_compile):
    model = text_model(p=p, jit_compile=jit_compile)
    w = [v.numpy() for v in model.trainable_variables]
    g, g_sam = hand_sam(model, w, direction)
    history = model.fit(TOKENS, LABELS, batch_size=4, shuffle=False,
                        verbose=0)
    for before, after, grad in zip(w, model.trainable_variables, g_sam):
        np.testing.assert_allclose(after.numpy(), before - grad, atol=2e-6)
    true_norm = np.sqrt(sum(np.sum(gi.astype("float64") ** 2) for gi in g))
    np.testing.assert_allclose(history.history["grad_norm"][0], true_norm,
                               rtol=1e-6)
    # The case can fail: counting rows per lookup gives another norm here.
    assert abs(_per_lookup_norm(model, w) - true_norm) > 1e-3 * true_norm


def _per_lookup_norm(model, w):
    grads = tape_gradient(model, w)
    assert isinstance(grads[0], tf.IndexedSlices)
    parts = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
    return float(np.sqrt(sum(np.sum(p.numpy() ** 2) for p in parts)))


def test_summed_rows_sums_duplicates_and_keeps_the_dense_value():
    grad = tf.IndexedSlices(
        tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
        tf.constant([2, 0, 2]),
        tf.constant([4, 2]),
    )
    summed = core_tensorflow.summed_rows(grad)
    assert isinstance(summed, tf.IndexedSlices)
    assert summed.indices.numpy().tolist() == [0, 2]  # once, ascending
    np.testing.assert_array_equal(
        tf.convert_to_tensor(summed), tf.convert_to_tensor(grad)
    )
    dense = tf.ones([2, 2])
    assert core_tensorflow.summed_rows(dense) is dense


@pytest.mark.parametrize("p", [2.0, float("inf"), 3.0])
def test_dual_vector_keeps_summed_rows_sparse(p):
    grad = tf.IndexedSlices(
        tf.constant([[1.0, -2.0], [3.0, 4.0]]),
        tf.constant([3, 0]),
        tf.constant([5, 2]),
    )
    other = tf.constant([0.5, -1.0])
    eps = perturbation.dual_vector([grad, other], 0.3, p)
    assert isinstance(eps[0], tf.IndexedSlices)  # no dense copy of a table
    dense = perturbation.dual_vector(
        [tf.convert_to_tensor(grad), other], 0.3, p
    )
    np.testing.assert_allclose(tf.convert_to_tensor(eps[0]), dense[0],
                               rtol=1e-6)
    np.testing.assert_allclose(eps[1], dense[1], rtol=1e-6)
