"""Each SAM variant's step against a hand computation of its formula."""

import keras
import numpy as np
import pytest

import keras_sam
from tests import oracle
from tests import reference
from tests.helpers import LEARNING_RATE
from tests.helpers import RHO
from tests.helpers import assert_weights_close
from tests.helpers import build
from tests.helpers import initial_weights
from tests.helpers import max_difference
from tests.helpers import weights_of


def one_step(**sam_kwargs):
    x, y = reference.tiny_data()
    model = build(rho=RHO, **sam_kwargs)
    model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)
    return model, x, y


def descend(grads):
    return reference.sgd_update(initial_weights(), grads, LEARNING_RATE)


def flat_norm(tensors, ord=2):
    return np.linalg.norm(
        np.concatenate([np.ravel(np.asarray(t)) for t in tensors]), ord=ord
    )


def test_p_inf_perturbs_by_rho_times_the_sign():
    model, x, y = one_step(p=float("inf"))
    w = initial_weights()
    g = reference.gradient(w, x, y)
    eps = [RHO * np.sign(gi) for gi in g]
    g_sam = reference.gradient([a + b for a, b in zip(w, eps)], x, y)
    assert_weights_close(weights_of(model), descend(g_sam))


def test_p3_uses_the_dual_exponent():
    model, x, y = one_step(p=3.0)
    w = initial_weights()
    g = [np.asarray(gi, np.float64) for gi in reference.gradient(w, x, y)]
    q = 1.5  # 1/3 + 1/q = 1
    denominator = sum(np.sum(np.abs(gi) ** q) for gi in g) ** (1 / 3)
    eps = [RHO * np.sign(gi) * np.abs(gi) ** (q - 1) / denominator for gi in g]
    g_sam = reference.gradient(
        [a + b.astype("float32") for a, b in zip(w, eps)], x, y
    )
    assert_weights_close(weights_of(model), descend(g_sam))


def test_plain_options_reduce_exactly_to_sam():
    explicit, _, _ = one_step(
        p=2.0, ascent_steps=1, adaptive=False, perturbed_fraction=1.0
    )
    plain, x, y = one_step()
    assert_weights_close(weights_of(explicit), weights_of(plain), atol=0)


def test_asam_scales_kernels_by_their_magnitude():
    eta = 0.01
    model, x, y = one_step(adaptive=True, eta=eta)
    w = initial_weights()
    g = reference.gradient(w, x, y)
    # Kernels (rank 2) get T = |w| + eta; biases T = 1.
    t = [np.abs(wi) + eta if wi.ndim == 2 else np.ones_like(wi) for wi in w]
    tg_norm = flat_norm([ti * gi for ti, gi in zip(t, g)])
    eps = [RHO * ti**2 * gi / tg_norm for ti, gi in zip(t, g)]
    g_sam = reference.gradient([a + b for a, b in zip(w, eps)], x, y)
    assert_weights_close(weights_of(model), descend(g_sam))


@pytest.mark.parametrize("p", [2.0, float("inf")])
def test_two_ascent_steps_project_onto_the_ball(p):
    model, x, y = one_step(ascent_steps=2, p=p)
    w = initial_weights()

    def dual(g):
        if np.isinf(p):
            return [RHO * np.sign(gi) for gi in g]
        return [RHO * gi / flat_norm(g) for gi in g]

    u = dual(reference.gradient(w, x, y))
    g1 = reference.gradient([a + b for a, b in zip(w, u)], x, y)
    u = [a + b for a, b in zip(u, dual(g1))]
    if np.isinf(p):
        u = [np.clip(ui, -RHO, RHO) for ui in u]
    else:
        u = [ui * min(1.0, RHO / flat_norm(u)) for ui in u]
    g_sam = reference.gradient([a + b for a, b in zip(w, u)], x, y)
    assert_weights_close(weights_of(model), descend(g_sam))


def test_random_perturbation_has_norm_rho_and_ignores_the_gradient():
    x, y = reference.tiny_data()
    w = initial_weights()
    z = random_z(3)
    eps = [RHO * zi / flat_norm(z) for zi in z]
    g_sam = reference.gradient([a + b for a, b in zip(w, eps)], x, y)
    trained = {}
    for seed in (3, 4):
        model = build(rho=RHO, perturbation="random", seed=seed)
        model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)
        trained[seed] = weights_of(model)
    assert_weights_close(trained[3], descend(g_sam))
    # The seed is what the draw depends on: another gives another step.
    assert max_difference(trained[4], descend(g_sam)) > 1e-4


def test_fisher_sparse_sam_perturbs_the_largest_squared_gradients():
    fraction = 0.25
    model, x, y = one_step(perturbed_fraction=fraction, mask="fisher")
    w = initial_weights()
    g = reference.gradient(w, x, y)
    scores = np.concatenate([np.ravel(gi) ** 2 for gi in g])
    k = int(round(fraction * scores.size))
    threshold = np.sort(scores)[-k]
    masked = [np.where(np.asarray(gi) ** 2 >= threshold, gi, 0.0) for gi in g]
    eps = [RHO * gi / flat_norm(masked) for gi in masked]
    assert sum(int(np.count_nonzero(e)) for e in eps) == k
    g_sam = reference.gradient(
        [a + b.astype("float32") for a, b in zip(w, eps)], x, y
    )
    assert_weights_close(weights_of(model), descend(g_sam))


def kernel_scale(weights, eta=0.01):
    """ASAM's T by hand: |w| + eta on kernels (rank 2), 1 on biases."""
    return [
        np.abs(w) + eta if np.ndim(w) == 2 else np.ones_like(w)
        for w in weights
    ]


def fisher_mask(g, fraction):
    """1 on the largest `fraction` of the squared gradients, by a sort."""
    scores = np.concatenate([np.ravel(np.asarray(gi)) ** 2 for gi in g])
    k = int(round(fraction * scores.size))
    threshold = np.sort(scores)[-k]
    return [(np.asarray(gi) ** 2 >= threshold).astype(np.float64) for gi in g]


def hand_eps(kind, w, g):
    """eps of the pipeline written out for one variant (float64)."""
    g = [np.asarray(gi, np.float64) for gi in g]
    if kind == "adaptive":
        t = kernel_scale([np.asarray(wi) for wi in w])
    elif kind == "fisher":
        t = fisher_mask(g, 0.5)
    else:
        t = [np.ones_like(gi) for gi in g]
    scaled = [ti * gi for ti, gi in zip(t, g)]
    return [RHO * ti * si / flat_norm(scaled) for ti, si in zip(t, scaled)]


SECOND_ORDER = {
    "plain": {},
    "adaptive": {"adaptive": True},
    "fisher": {"perturbed_fraction": 0.5, "mask": "fisher"},
}


@pytest.mark.parametrize("kind", sorted(SECOND_ORDER))
def test_second_order_gradient_matches_finite_differences(kind):
    x, y = reference.tiny_data()
    model = build(rho=RHO, second_order=True, **SECOND_ORDER[kind])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=model.loss)
    model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)
    gradient = [a - b for a, b in zip(initial_weights(), weights_of(model))]

    # F(w) = L(w + eps(w)), eps by hand, differentiated numerically in
    # float64 along random directions.
    def objective(weights):
        g = reference.gradient(weights, x, y)
        eps = hand_eps(kind, weights, g)
        perturbed = [a + b for a, b in zip(weights, eps)]
        return float(reference.loss(perturbed, x, y))

    rng = np.random.default_rng(0)
    w = [v.astype(np.float64) for v in initial_weights()]
    h = 1e-5
    for _ in range(3):
        d = [rng.normal(size=v.shape) for v in w]
        plus = objective([a + h * b for a, b in zip(w, d)])
        minus = objective([a - h * b for a, b in zip(w, d)])
        numeric = (plus - minus) / (2 * h)
        analytic = sum(float(np.sum(a * b)) for a, b in zip(gradient, d))
        np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-5)
    first_order = reference.sam_gradient(initial_weights(), x, y, RHO)
    assert not np.allclose(
        np.concatenate([np.ravel(a) for a in gradient]),
        np.concatenate([np.ravel(np.asarray(a)) for a in first_order]),
        atol=1e-4,
    )


def random_z(seed, kind="random"):
    """The step-0 standard normal draw of a random eps (or mask), as
    keras_sam documents it on this backend (`oracle.normal_draw`)."""
    shapes = [w.shape for w in initial_weights()]
    return oracle.normal_draw(shapes, seed, kind=kind)


RANDOM = {
    "p_inf": {"p": float("inf")},
    "adaptive": {"adaptive": True},
    "random_mask": {"perturbed_fraction": 0.5, "mask": "random"},
}


@pytest.mark.parametrize("kind", sorted(RANDOM))
def test_random_perturbation_honours_p_adaptive_and_mask(kind):
    model, x, y = one_step(perturbation="random", seed=5, **RANDOM[kind])
    w = initial_weights()
    z = random_z(5)
    if kind == "p_inf":
        eps = [RHO * np.sign(zi) for zi in z]
    elif kind == "adaptive":
        eps = [ti * RHO * zi / flat_norm(z)
               for ti, zi in zip(kernel_scale(w), z)]
    else:
        mask = fisher_mask(random_z(5, "mask"), 0.5)  # largest |z'|
        masked = [mi * zi for mi, zi in zip(mask, z)]
        eps = [RHO * zi / flat_norm(masked) for zi in masked]
    g_sam = reference.gradient(
        [a + b.astype("float32") for a, b in zip(w, eps)], x, y
    )
    assert_weights_close(weights_of(model), descend(g_sam))


def test_random_perturbation_logs_the_loss_at_w():
    x, y = reference.tiny_data()
    model = build(rho=RHO, perturbation="random")
    logs = model.fit(x, y, batch_size=len(y), verbose=0).history
    loss = float(reference.loss(initial_weights(), x, y))
    np.testing.assert_allclose(logs["loss"][0], loss, rtol=1e-5)


def test_a_kept_fisher_mask_is_reused_until_its_update():
    x, y = reference.tiny_data()
    model = build(rho=RHO, perturbed_fraction=0.5, mask_update_every=2)
    model.fit(x, y, batch_size=len(y), epochs=2, shuffle=False, verbose=0)
    w = initial_weights()
    mask = fisher_mask(reference.gradient(w, x, y), 0.5)  # from step 0
    for _ in range(2):
        g = [np.asarray(gi, np.float64) for gi in reference.gradient(w, x, y)]
        masked = [mi * gi for mi, gi in zip(mask, g)]
        eps = [RHO * gi / flat_norm(masked) for gi in masked]
        g_sam = reference.gradient(
            [a + b.astype("float32") for a, b in zip(w, eps)], x, y
        )
        w = reference.sgd_update(w, g_sam, LEARNING_RATE)
    assert_weights_close(weights_of(model), w)


def hybrid_gradient(rule, weights, x, y):
    """L-SAM / J-SAM by hand for the reference network: dl/df at one
    point times df/dw (and the L2 penalty's gradient) at the other."""
    g = reference.gradient(weights, x, y)
    eps = [RHO * gi / flat_norm(g) for gi in g]
    perturbed = [a + b for a, b in zip(weights, eps)]
    cotangent_point, jacobian_point = (
        (perturbed, weights) if rule == "logit" else (weights, perturbed)
    )
    cotangent = reference.output_gradient(cotangent_point, x, y)
    return reference.vjp(jacobian_point, x, cotangent)


@pytest.mark.parametrize("rule", ["logit", "jacobian"])
def test_logit_and_jacobian_sam_per_example(rule):
    x, y = reference.tiny_data(n=4)
    model = build(rho=RHO, m=1, gradient_rule=rule)
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    per_example = [
        hybrid_gradient(rule, initial_weights(), x[i : i + 1], y[i : i + 1])
        for i in range(4)
    ]
    mean = [np.mean(parts, axis=0) for parts in zip(*per_example)]
    assert_weights_close(weights_of(model), descend(mean))


def linear_model(**sam_kwargs):
    inputs = keras.Input((reference.INPUT_DIM,))
    outputs = keras.layers.Dense(3, use_bias=False)(inputs)
    model = keras_sam.SAMModel(inputs, outputs, rho=RHO, m=1, **sam_kwargs)
    model.layers[-1].kernel.assign(initial_weights()[0][:, :3])
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_for_a_linear_model_l_sam_is_1_sam_and_j_sam_is_sgd():
    # With f linear in w, df/dw does not depend on where it is taken, so
    # L-SAM (dl/df at w + eps) is 1-SAM, and J-SAM (dl/df at w) is SGD.
    x, y = reference.tiny_data()
    trained = {}
    for name, kwargs in {
        "1sam": {},
        "logit": {"gradient_rule": "logit"},
        "jacobian": {"gradient_rule": "jacobian"},
        "sgd": {"rho": 0.0},
    }.items():
        kwargs = dict(kwargs)
        model = linear_model(**{k: v for k, v in kwargs.items() if k != "rho"})
        model.rho.assign(kwargs.get("rho", RHO))
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        trained[name] = weights_of(model)
    assert_weights_close(trained["logit"], trained["1sam"])
    assert_weights_close(trained["jacobian"], trained["sgd"])
    with pytest.raises(AssertionError):
        assert_weights_close(trained["1sam"], trained["sgd"], atol=1e-5)


def test_hybrid_rules_need_a_logit_loss():
    model = build(rho=RHO, m=1, gradient_rule="logit")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = reference.tiny_data()
    with pytest.raises(ValueError, match="from_logits=True"):
        model.fit(x, y, batch_size=8, verbose=0)


def test_sam_every_k_alternates_sam_and_base_steps():
    x, y = reference.tiny_data()
    model = build(rho=RHO, sam_every=2)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    w = initial_weights()
    w = reference.sgd_update(
        w, reference.sam_gradient(w, x, y, RHO), LEARNING_RATE
    )  # step 0: SAM
    w = reference.sgd_update(
        w, reference.gradient(w, x, y), LEARNING_RATE
    )  # step 1: base optimizer
    assert_weights_close(weights_of(model), w)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eta": -1.0}, "`eta`"),
        ({"ascent_steps": 0}, "`ascent_steps` must be an integer >= 1"),
        ({"ascent_steps": 2, "p": 3.0}, "p=2 and p=inf"),
        ({"perturbed_fraction": 0.0}, "`perturbed_fraction` must be in"),
        ({"perturbed_fraction": 1.5}, "`perturbed_fraction` must be in"),
        ({"mask": "magnitude"}, "`mask` must be one of"),
        ({"perturbation": "noise"}, "`perturbation` must be one of"),
        ({"gradient_rule": "both"}, "`gradient_rule` must be one of"),
        ({"sam_every": 0}, "`sam_every` must be an integer >= 1"),
        ({"second_order": True, "ascent_steps": 2}, "cannot be combined"),
        ({"perturbation": "random", "second_order": True}, "random"),
        ({"perturbation": "random", "perturbed_fraction": 0.5},
         "mask='random'"),
        ({"perturbation": "momentum", "ascent_steps": 2}, "gradient at w"),
        ({"perturbation": "momentum", "m": 2}, "leave m=None"),
        ({"perturbation": "random", "trigger": "adaptive"}, "gradient at w"),
        ({"trigger": "adaptive", "m": 2}, "per replica batch"),
        ({"off_step": "looksam", "m": 2}, "one stored direction"),
        ({"perturbed_fraction": 0.5, "mask_update_every": 2, "m": 2},
         "mask_update_every=1"),
        ({"sam_from": 0.5}, "total_steps"),
        ({"sam_from": -1}, "`sam_from` must be"),
        ({"trigger": "adaptive", "trigger_decay": 1.0}, "`trigger_decay`"),
        ({"trigger_c_end": 1.0}, "total_steps"),
        ({"trigger": "sometimes"}, "`trigger` must be one of"),
        ({"off_step": "lookahead"}, "`off_step` must be one of"),
        ({"looksam_alpha": -0.5}, "`looksam_alpha`"),
    ],
)
def test_bad_variant_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


def test_variant_options_survive_a_keras_round_trip(tmp_path):
    model, x, _ = one_step(adaptive=True, eta=0.2, ascent_steps=3, sam_every=2)
    path = str(tmp_path / "variant.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.sam_options == model.sam_options


EAGER_VARIANTS = {
    "sam": {},
    "m2": {"m": 2},
    "m1": {"m": 1},
    "every2_looksam": {"sam_every": 2, "off_step": "looksam"},
    "adaptive_trigger": {"trigger": "adaptive"},
    "momentum": {"perturbation": "momentum"},
    "random": {"perturbation": "random"},
    "asam_fisher": {"adaptive": True, "mask": "fisher",
                    "perturbed_fraction": 0.5},
    "two_ascent_steps": {"ascent_steps": 2},
}


@pytest.mark.parametrize("name", sorted(EAGER_VARIANTS))
def test_run_eagerly_trains_as_the_compiled_step(name):
    """`compile(run_eagerly=True)` runs the same step: same weights, same
    dropout draws, for every variant (with a remainder batch)."""
    x = np.random.RandomState(0).rand(10, 3).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    trained = []
    for run_eagerly in (True, False):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,))
        hidden = keras.layers.Dense(4, activation="relu")(inputs)
        hidden = keras.layers.Dropout(0.2, seed=1)(hidden)
        model = keras_sam.SAMModel(
            inputs, keras.layers.Dense(1)(hidden), rho=RHO,
            **EAGER_VARIANTS[name],
        )
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse",
                      run_eagerly=run_eagerly)
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        trained.append(model.get_weights())
    assert_weights_close(trained[0], trained[1], atol=1e-6)
