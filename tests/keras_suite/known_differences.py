"""The Keras tests expected to fail with SAMModel, per flavour, and why.

Each entry names one Keras test (an fnmatch pattern over the ids of
`plugin.test_id`, e.g. `models/model_test.py::ModelTest::test_x`), its
kind, its reason, and a regular expression its failure message must
match. `test_keras_suite` holds the lists strictly: a listed test that
passes, or fails for another reason, fails the suite until its entry is
changed, as an unlisted failure does. A pattern must name failing tests
only.

Kinds:
- "defect": a keras_sam bug, known and not fixed yet (the entry goes with
  the fix);
- "intended": a difference by design, or one that the substitution of a
  class name itself makes.
"""

from typing import NamedTuple


class Known(NamedTuple):
    """An expected failure of one Keras test (or a pattern of them)."""

    kind: str  # "defect" or "intended"
    reason: str
    match: str  # a regular expression searched in the failure message


_ISINSTANCE_MODEL = Known(
    "intended",
    "The test builds a plain `Functional(...)` (not substituted: it is not "
    "`keras.Model`) and asserts that it is an instance of `Model`, which "
    "in this flavour names the SAM class: a check of Keras' own class "
    "hierarchy that a substituted name cannot pass.",
    r"<Functional name=basic, built=True> is not an instance of",
)

KNOWN = {
    "keras": {},
    "direct": {
        "models/functional_test.py::FunctionalTest::"
        "test_basic_flow_multi_input": _ISINSTANCE_MODEL,
    },
    "subclassed": {
        "models/functional_test.py::FunctionalTest::"
        "test_basic_flow_multi_input": _ISINSTANCE_MODEL,
    },
    "from_model": {
        "trainers/trainer_test.py::TestTrainer::test_retracing": Known(
            "intended",
            "The test's TracingCounterModel(keras.Model) overrides "
            "`train_step`; `SAMModel.from_model` refuses such a class by "
            "design (SAM's step would replace the user's code), naming "
            "the fix: subclass SAMModel and call compute_sam_gradients.",
            r"ValueError: TracingCounterModel overrides `train_step`",
        ),
    },
}
