"""One SAM step of every layer family and option against a float64 oracle.

A generated matrix, layer family x SAM option: each case builds a small
functional `keras_sam.SAMModel` ending in Dense logits over 3 classes,
takes one full-batch step with `SGD(learning_rate=1.0)` (so the new weights
are w - g_sam) and compares it with `tests/oracle.py`, which builds the
same architecture again in float64 and writes the variant's formula by
hand. Checked: the trained weights, the non-trainable state (BatchNorm's
moving statistics are those of the pass at w; with m, the groups' mean),
the logged `sharpness` L(w + eps) - L(w), and the logged `grad_norm`
||g||_2 at w for every option that takes a gradient there (with m, the
mean of the groups' norms, as the README documents).

Tolerance: ATOL = RTOL = 2e-5. The step runs in float32 (unit roundoff
6e-8) through a few layers and two to four gradient evaluations; on the
passing cases its largest error is 7e-7 (under 3% of the tolerance, most
cases under 1%), so 2e-5 leaves a wide margin for rounding and none for a
wrong formula: each case first asserts that the oracle's SAM gradient
differs from the plain gradient (and a variant's from plain SAM's, and
BatchNorm's statistics at w from those at w + eps) by more than
DISTINCT = 50 ATOL, so that no case can pass by accident.

One case has a wider tolerance, 1e-4 (still 10 times under DISTINCT):
BatchNormalization with groups of two examples (m=2). A feature's variance
over two values can be near 0, and 1/sqrt(variance + 1e-3) multiplies
the rounding in the variance's gradient by up to 32. JAX and PyTorch
differentiate the variance through the batch mean too (a term that is 0
but for rounding), so there the float32 step lands 2.4e-5 from the oracle
(2.7e-5 on PyTorch, 3e-6 on TensorFlow, same initial weights).

The matrix runs on every backend (`KERAS_BACKEND=jax` or `torch`: the
oracle then differentiates with that backend, `tests/autodiff.py`).

Documented exclusions: m=1 (1-SAM) refuses BatchNormalization, so that
case expects the ValueError that says so.
"""

import keras
import numpy as np
import pytest

from tests import oracle
from tests.matrix_cases import ATOL
from tests.matrix_cases import DISTINCT
from tests.matrix_cases import FAMILIES
from tests.matrix_cases import OPTIONS
from tests.matrix_cases import RHO
from tests.matrix_cases import batch
from tests.matrix_cases import sam_model
from tests.matrix_cases import train_one_step

# (family, option) -> its tolerance where ATOL = RTOL is too tight for
# float32 (see the module's docstring).
TOLERANCE = {("batch_normalization", "m2"): 1e-4}
# Documented refusals: (family, option) -> the ValueError's message.
REFUSED = {
    ("batch_normalization", "m1"): "m=1 .* BatchNormalization",
}

# The long tail of the matrix, marked slow (-m "not slow" deselects it):
# about 0.7 s a case, but 1.5-20 s where keras_sam traces a recurrent
# layer's while loop once per pass, group or nested tape, or maps its step
# over groups (vectorized_map, or unrolled copies of a convolution). The
# fast tier keeps every family with plain SAM, every option on the
# feed-forward families, and m on four of them.
RECURRENT = ("embedding_masked_gru", "lstm", "gru", "bidirectional_lstm")
GROUPED = ("m1", "m2", "m3_with_leftover")
GROUPED_FAST = (
    "dense", "embedding", "batch_normalization", "layer_normalization"
)
SLOW = {
    (f, o) for f in RECURRENT for o in OPTIONS if o != "sam"
} | {
    (f, o) for f in FAMILIES for o in GROUPED if f not in GROUPED_FAST
}


def _case(family, option):
    marks = [pytest.mark.slow] if (family, option) in SLOW else []
    return pytest.param(family, option, marks=marks, id=f"{family}-{option}")


CASES = [_case(f, o) for f in FAMILIES for o in OPTIONS]

def snapshot(variables) -> tuple:
    """The variables' paths and values (NumPy)."""
    return [v.path for v in variables], [oracle.numpy(v) for v in variables]


def assert_all_close(names, actual, expected, what, tolerance=ATOL):
    """Every tensor within `tolerance` (absolute and relative); the
    message lists each mismatch."""
    mismatches = []
    for name, a, e in zip(names, actual, expected):
        a, e = np.asarray(a), np.asarray(e)
        if not np.issubdtype(e.dtype, np.floating):  # a seed: exactly
            close = np.array_equal(a, e)
        else:
            close = np.allclose(a, e, atol=tolerance, rtol=tolerance)
        if not close:
            mismatches.append(
                f"{name}: max |diff| {np.max(np.abs(a - e)):.3g} "
                f"(max |expected| {np.max(np.abs(e)):.3g})"
            )
    assert not mismatches, f"{what} differ: " + "; ".join(mismatches)


def assert_distinct(a, b, what):
    """The oracle's two results differ measurably (the case is sensitive)."""
    gap = oracle.max_difference(a, b)
    assert gap > DISTINCT, f"ill-posed case: {what} differ by only {gap:.3g}"


def assert_well_posed(twin, expected, options, x, y):
    """The reference itself tells SAM, the variant and SGD apart."""
    assert_distinct(expected.sam_grads, expected.grads, "g_sam and g")
    if options:
        plain = oracle.sam_step(twin, x, y, RHO)
        assert_distinct(expected.sam_grads, plain.sam_grads,
                        "the variant's and plain SAM's g_sam")
    if options.get("perturbed_fraction", 1.0) < 1.0:
        margin = oracle.fisher_margin(
            expected.grads, options["perturbed_fraction"]
        )
        assert margin > 1e-3, f"Fisher threshold margin {margin:.3g}"
    statistics = [
        (a, b) for a, b in zip(expected.state, expected.perturbed_state)
        if oracle.is_floating(a)  # not a seed generator's state
    ]
    if statistics:
        assert_distinct(*zip(*statistics), "the statistics at w and w + eps")


# --------------------------------------------------------------- tests


@pytest.mark.parametrize("family, option", CASES)
def test_one_step_matches_the_float64_oracle(family, option):
    """One fit step of SAMModel equals the oracle's w - g_sam."""
    options = OPTIONS[option]
    x, y = batch(family)
    model = sam_model(family, options)
    if (family, option) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[family, option]):
            train_one_step(model, x, y)
        return
    twin = oracle.Oracle(oracle.float64_twin(
        lambda: keras.Model(*FAMILIES[family].graph()), model
    ))
    expected = oracle.sam_step(twin, x, y, RHO, **options)
    assert_well_posed(twin, expected, options, x, y)

    logs = train_one_step(model, x, y)

    tolerance = TOLERANCE.get((family, option), ATOL)
    assert_all_close(
        *snapshot(model.trainable_variables),
        oracle.sgd_weights(twin, expected.sam_grads), "trained weights",
        tolerance,
    )
    assert_all_close(
        *snapshot(model.non_trainable_variables), expected.state,
        "non-trainable state (moving statistics)", tolerance,
    )
    if options.get("perturbation", "gradient") == "gradient":
        np.testing.assert_allclose(
            logs["grad_norm"], expected.grad_norm, rtol=tolerance,
            atol=tolerance, err_msg="grad_norm",
        )
    np.testing.assert_allclose(
        logs["sharpness"], expected.sharpness, rtol=tolerance,
        atol=tolerance, err_msg="sharpness",
    )
