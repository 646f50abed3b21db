"""The dual-vector perturbation of Foret et al. eq. 2, checked by its properties."""

import numpy as np
import pytest
from keras import ops

from keras_sam.core import perturbation


def grads_fixture(seed=0):
    rng = np.random.default_rng(seed)
    return [
        ops.convert_to_tensor(rng.normal(size=(3, 4)), "float32"),
        ops.convert_to_tensor(rng.normal(size=(5,)), "float32"),
    ]


def flat(tensors):
    return np.concatenate([np.ravel(ops.convert_to_numpy(t)) for t in tensors])


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0, float("inf")])
def test_dual_vector_lies_on_the_sphere_and_maximises_the_linear_term(p):
    grads, rho = grads_fixture(), 0.7
    eps = flat(perturbation.dual_vector(grads, rho, p))
    g = flat(grads)
    q = 1.0 if np.isinf(p) else p / (p - 1.0)
    # ||eps||_p = rho, and <eps, g> reaches Hoelder's bound rho * ||g||_q.
    np.testing.assert_allclose(np.linalg.norm(eps, ord=p), rho, rtol=1e-5)
    np.testing.assert_allclose(
        eps @ g, rho * np.linalg.norm(g, ord=q), rtol=1e-5
    )


def test_p2_is_the_normalised_gradient_and_inf_the_sign():
    grads = grads_fixture()
    g = flat(grads)
    np.testing.assert_allclose(
        flat(perturbation.dual_vector(grads, 0.5, 2.0)),
        0.5 * g / np.linalg.norm(g),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        flat(perturbation.dual_vector(grads, 0.5, float("inf"))),
        0.5 * np.sign(g),
    )


@pytest.mark.parametrize("p", [2.0, 3.0, float("inf")])
def test_zero_and_non_finite_gradients_give_zero_perturbation(p):
    zeros = [ops.zeros((2, 2)), ops.zeros((3,))]
    eps = perturbation.dual_vector(zeros, 0.1, p)
    np.testing.assert_array_equal(flat(eps), 0.0)
    poisoned = [ops.convert_to_tensor([[1.0, np.inf]]),
                ops.convert_to_tensor([np.nan])]
    eps = perturbation.dual_vector(poisoned, 0.1, p)
    np.testing.assert_array_equal(flat(eps), 0.0)


def test_global_norm_matches_numpy():
    grads = grads_fixture(1)
    for p in (2.0, 3.0, float("inf")):
        np.testing.assert_allclose(
            float(perturbation.global_norm(grads, p)),
            np.linalg.norm(flat(grads), ord=p),
            rtol=1e-5,
        )


@pytest.mark.parametrize("p, match", [(1.0, "> 1"), (0.5, "> 1"), ("x", "number")])
def test_check_p_rejects_bad_orders(p, match):
    with pytest.raises(ValueError, match=match):
        perturbation.check_p(p)
