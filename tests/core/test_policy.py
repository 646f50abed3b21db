"""The cheap SAMs (keras_sam.core.policy) against hand computations.

Each policy runs a few steps of `fit` on the reference network and is
compared with the same steps written with plain TensorFlow/NumPy in this
file (tests/reference.py gives g and SAM's gradient): once on one device,
once under a MirroredStrategy of two replicas, where the hand computation
gives every replica its own half of the batch and its own policy state
(AE-SAM's statistics, LookSAM's g_v) and averages the replicas' gradients,
as the optimizer does (the two replicas on TensorFlow only: the other
backends have no MirroredStrategy).
"""

import contextlib
import warnings

import keras
import numpy as np
import pytest

from tests import reference
from tests.helpers import LEARNING_RATE
from tests.helpers import RHO
from tests.helpers import assert_weights_close
from tests.helpers import build
from tests.helpers import initial_weights
from tests.helpers import max_difference
from tests.helpers import mirrored
from tests.helpers import weights_of

STEPS = 4
MOMENTUM = 0.9
REPLICAS = [1, 2] if keras.backend.backend() == "tensorflow" else [1]


def flat_norm(tensors):
    return float(np.sqrt(sum(np.sum(np.square(t)) for t in tensors)))


def plain(state, w, x, y, t, shared):
    return reference.gradient(w, x, y)


def sam(state, w, x, y, t, shared):
    return reference.sam_gradient(w, x, y, RHO)


def late(start):
    def rule(state, w, x, y, t, shared):
        chosen = sam if t >= start else plain
        return chosen(state, w, x, y, t, shared)

    return rule


def ae_sam(c, decay=0.9):
    """Jiang et al. 2023, Algorithm 1, per replica."""

    def rule(state, w, x, y, t, shared):
        g = reference.gradient(w, x, y)
        n2 = flat_norm(g) ** 2
        mean = decay * state.get("mean", 0.0) + (1 - decay) * n2
        var = decay * state.get("var", 0.0) + (1 - decay) * (n2 - mean) ** 2
        state.update(mean=mean, var=var)
        use = n2 >= mean + c * np.sqrt(var)
        state.setdefault("decisions", []).append(use)
        return reference.sam_gradient(w, x, y, RHO) if use else g

    return rule


def looksam(k, alpha):
    """Liu et al. 2022, Algorithm 1, g_v per replica."""

    def rule(state, w, x, y, t, shared):
        g = [np.asarray(a, np.float64) for a in reference.gradient(w, x, y)]
        if t % k == 0:
            gs = [np.asarray(a, np.float64)
                  for a in reference.sam_gradient(w, x, y, RHO)]
            dot = sum(np.sum(a * b) for a, b in zip(g, gs))
            state["gv"] = [b - dot / flat_norm(g) ** 2 * a
                           for a, b in zip(g, gs)]
            return gs
        gv = state.get("gv")
        if gv is None:
            return g
        ratio = alpha * flat_norm(g) / flat_norm(gv)
        return [a + ratio * b for a, b in zip(g, gv)]

    return rule


def momentum_sam(state, w, x, y, t, shared):
    """Becker et al. 2024: eps = -rho v/||v||; Keras' SGD keeps m = -lr v."""
    m = shared["m"]
    norm = flat_norm(m)
    eps = [RHO * a / norm if norm > 0 else 0 * a for a in m]
    return reference.gradient(
        [a + b.astype("float32") for a, b in zip(w, eps)], x, y
    )


def hand_run(rule, x, y, replicas=1, momentum=None, steps=STEPS):
    """`steps` SGD steps on the mean of the replicas' `rule` gradients."""
    w = [v.astype("float32") for v in initial_weights()]
    states = [{} for _ in range(replicas)]
    shared = {"m": [np.zeros_like(v) for v in w]}
    halves = np.split(np.arange(len(y)), replicas)
    for t in range(steps):
        parts = [
            rule(state, w, x[h], y[h], t, shared)
            for state, h in zip(states, halves)
        ]
        g = [np.mean([np.asarray(p[i], np.float64) for p in parts], axis=0)
             for i in range(len(w))]
        if momentum is None:
            w = [a - LEARNING_RATE * b for a, b in zip(w, g)]
        else:
            shared["m"] = [momentum * m - LEARNING_RATE * b
                           for m, b in zip(shared["m"], g)]
            w = [a + m for a, m in zip(w, shared["m"])]
        w = [np.asarray(a, np.float32) for a in w]
    return w, states


def keras_run(replicas=1, momentum=None, steps=STEPS, **sam_kwargs):
    x, y = reference.tiny_data()
    scope = mirrored(2).scope() if replicas == 2 else contextlib.nullcontext()
    with scope:
        model = build(rho=RHO, **sam_kwargs)
        if momentum is not None:
            model.compile(
                optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum),
                loss=model.loss,
            )
    model.fit(x, y, batch_size=len(y), epochs=steps, shuffle=False,
              verbose=0)
    return weights_of(model), x, y


POLICIES = {
    "late": ({"sam_from": 2}, late(2), None),
    "late_fraction": ({"sam_from": 0.5, "total_steps": 4}, late(2), None),
    "every": ({"sam_every": 3}, looksam(3, 0.0), None),
    "ae_sam": ({"trigger": "adaptive", "trigger_decay": 0.5, "trigger_c": 0.3},
               ae_sam(0.3, decay=0.5), None),
    "ae_sam_scheduled": (
        {"trigger": "adaptive", "trigger_c": -1.0, "trigger_c_end": 1.0,
         "total_steps": 4, "trigger_decay": 0.5},
        None, None,
    ),
    "looksam": ({"sam_every": 2, "off_step": "looksam", "looksam_alpha": 0.7},
                looksam(2, 0.7), None),
    "momentum": ({"perturbation": "momentum"}, momentum_sam, MOMENTUM),
}


def scheduled_rule():
    """AE-SAM with c_t linear from -1 to 1 over 4 steps, delta 0.5."""
    rules = {t: ae_sam(-1.0 + 2.0 * t / 4, decay=0.5) for t in range(4)}
    stats = {}

    def rule(state, w, x, y, t, shared):
        own = stats.setdefault(id(state), {})
        return rules[t](own, w, x, y, t, shared)

    return rule


@pytest.mark.parametrize("replicas", REPLICAS)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_matches_its_hand_computation(name, replicas):
    kwargs, rule, momentum = POLICIES[name]
    rule = rule or scheduled_rule()
    actual, x, y = keras_run(replicas, momentum, **kwargs)
    expected, states = hand_run(rule, x, y, replicas, momentum)
    assert_weights_close(actual, expected, atol=2e-6)
    if name == "ae_sam" and replicas == 1:
        # The case is only a test if the trigger both fired and did not.
        assert set(states[0]["decisions"]) == {True, False}


LIMITS = {
    # policy options -> the hand rule they reduce to, and which one
    "late_from_0_is_sam": ({"sam_from": 0}, sam, None),
    "late_after_training_is_sgd": ({"sam_from": 100}, plain, None),
    "ae_sam_low_threshold_is_sam": (
        {"trigger": "adaptive", "trigger_c": -1e6}, sam, None),
    "ae_sam_high_threshold_is_sgd": (
        {"trigger": "adaptive", "trigger_c": 1e6}, plain, None),
    "looksam_every_step_is_sam": (
        {"off_step": "looksam", "looksam_alpha": 0.7}, sam, None),
    "looksam_alpha_0_is_sam_every": (
        {"sam_every": 2, "off_step": "looksam", "looksam_alpha": 0.0},
        looksam(2, 0.0), None),
    "momentum_sam_rho_0_is_sgd": (
        {"perturbation": "momentum", "rho": 0.0}, plain, MOMENTUM),
}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_policy_reduces_to_sam_or_sgd(name):
    kwargs, rule, momentum = LIMITS[name]
    kwargs = dict(kwargs)
    rho = kwargs.pop("rho", RHO)
    x, y = reference.tiny_data()
    model = build(rho=rho, **kwargs)
    if momentum is not None:
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum),
                      loss=model.loss)
    model.fit(x, y, batch_size=len(y), epochs=STEPS, shuffle=False, verbose=0)
    expected, _ = hand_run(rule, x, y, momentum=momentum)
    assert_weights_close(weights_of(model), expected, atol=2e-6)


def test_momentum_sam_refuses_an_optimizer_without_momentum():
    x, y = reference.tiny_data()
    model = build(rho=RHO, perturbation="momentum")
    with pytest.raises(ValueError, match="momentum=0.9"):
        model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)


def test_policy_state_stays_out_of_the_model_weights():
    x, y = reference.tiny_data()
    model = build(rho=RHO, trigger="adaptive", sam_every=2,
                  off_step="looksam", perturbed_fraction=0.5,
                  mask_update_every=2)
    count = len(model.weights)
    model.fit(x, y, batch_size=len(y), epochs=2, verbose=0)
    assert len(model.weights) == count
    state = model._sam.step_state
    assert state.trigger_stats and state.direction and state.mask
    assert not {id(v) for v in model.weights} & {
        id(v) for v in state.direction + state.mask + state.trigger_stats
    }


def test_momentum_sam_with_adam_perturbs_along_its_first_moment():
    """With Adam, v is Adam's first moment m (a moving mean of g): each step
    takes the gradient at w - rho m/||m|| and applies it with Adam."""
    x, y = reference.tiny_data()
    lr, b1, b2, epsilon = 0.01, 0.9, 0.999, 1e-7
    model = build(rho=RHO, perturbation="momentum",
                  optimizer=keras.optimizers.Adam(lr))
    model.fit(x, y, batch_size=len(y), epochs=STEPS, shuffle=False,
              verbose=0)

    w = [np.asarray(v, np.float64) for v in initial_weights()]
    m = [np.zeros_like(v) for v in w]
    v2 = [np.zeros_like(v) for v in w]
    for t in range(1, STEPS + 1):
        norm = flat_norm(m)
        eps = [-RHO * a / norm if norm > 0 else 0 * a for a in m]
        g = reference.gradient(
            [(a + e).astype("float32") for a, e in zip(w, eps)], x, y
        )
        g = [np.asarray(b, np.float64) for b in g]
        m = [a + (1 - b1) * (b - a) for a, b in zip(m, g)]
        v2 = [a + (1 - b2) * (b * b - a) for a, b in zip(v2, g)]
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        w = [a - alpha * mi / (np.sqrt(vi) + epsilon)
             for a, mi, vi in zip(w, m, v2)]
    # float64 by hand: Adam's m / sqrt(v) amplifies float32 rounding.
    assert_weights_close(weights_of(model), w, atol=1e-5)
    # Not plain Adam: the perturbation moved the gradients.
    plain = build(rho=0.0, optimizer=keras.optimizers.Adam(lr))
    plain.fit(x, y, batch_size=len(y), epochs=STEPS, shuffle=False,
              verbose=0)
    assert max_difference(weights_of(plain), w) > 1e-2  # 0.03 here


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow's choice between XLA and its graph (JAX has only XLA)",
)
def test_a_policy_under_xla_on_cpu_warns_that_convolutions_are_slow():
    x, y = reference.tiny_data()
    # m-groups: XLA compiles the whole step, its conditional included.
    model = build(rho=RHO, sam_every=2, m=2, jit_compile=True)
    with pytest.warns(UserWarning, match=r"jit_compile=False.*"):
        model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    # Only rho decides (no conditional), or XLA compiles only the passes
    # (the conditional is TensorFlow's): no warning.
    for options in ({"m": 2}, {"sam_every": 2}):
        plain = build(rho=RHO, jit_compile=True, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            plain.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
