"""Keras' own model and trainer tests pass with SAMModel at rho=0.

The drop-in rule (README.md) says that whatever works with `keras.Model`
works with `SAMModel`. Keras ships its tests of `Model`, `Functional`,
`Sequential` and the trainer in its wheel; `plugin` runs those four files
in a subprocess with `keras.Model` replaced by SAMModel in three flavours
(`direct`, `subclassed`, `from_model`, see `plugin`), and each test here
asserts one flavour's outcome: every Keras test passes, or is skipped by
Keras itself, except the entries of `known_differences.KNOWN`, which must
fail, and for their stated reason (strict accounting: a fixed defect fails
this test until its entry is removed).

`test_keras_suite_direct` runs all 306 Keras tests in the `direct`
flavour (about 110 of them build a SAM model), 3 to 3.7 CPU-minutes;
plain Keras alone (`python -m tests.keras_suite.plugin keras`, the
control) takes as long, so SAM adds little. It keeps `sam_building.txt`
exact, the tests that build a SAM model, and runs with `make
test-extended`; `make test` (CI) runs those listed tests in every flavour,
about 1.2 CPU-minutes each, in parallel. Hence `slow`.
"""

import os
import re

import pytest

from tests.keras_suite import known_differences
from tests.keras_suite import plugin

# At least this many Keras tests must build a SAM model in each flavour
# (109 of about 300 do with Keras 3.15; the rest use Keras' Trainer-mixin
# models or Sequential, which are not substituted): a guard against a
# substitution that silently stops happening.
MIN_SAM_TESTS = 90


def check(report, known) -> list:
    """The problems of a run against its known differences.

    Args:
        report: The plugin's JSON report, as a dict.
        known: Dict, pattern -> `known_differences.Known`.

    Returns:
        A list of strings, one per problem: an unexpected failure, a listed
        test that passed or failed for another reason, an entry naming no
        test.
    """
    tests = report["tests"]
    problems = []
    expected = {}
    for pattern, entry in known.items():
        ids = plugin.matching(pattern, tests)
        if not ids:
            problems.append(f"stale entry, no such test: {pattern}")
        for key in ids:
            expected[key] = entry
    for key, result in sorted(tests.items()):
        entry = expected.get(key)
        failed = result["outcome"] == "failed"
        message = result["message"]
        if entry is None and failed:
            problems.append(f"unexpected failure: {key}: {message[:500]}")
        elif entry is not None and not failed:
            problems.append(
                f"{result['outcome']} but listed as a known difference "
                f"({entry.kind}), remove its entry: {key}"
            )
        elif entry is not None and not re.search(entry.match, message):
            problems.append(
                f"fails for another reason than its entry ({entry.match!r})"
                f": {key}: {message[:500]}"
            )
    return problems


def run_and_check(flavour, workdir, only=None, min_tests=250):
    """Runs one flavour and asserts its outcome; returns its report."""
    report, output = plugin.run_suite(flavour, workdir, only=only)
    assert report is not None, f"the run wrote no report:\n{output}"
    tests = report["tests"]
    assert len(tests) >= min_tests, (
        f"only {len(tests)} Keras tests ran:\n{output}")
    sam_tests = sum(1 for entry in tests.values() if entry["sam_models"])
    print(
        f"{flavour}: {len(tests)} Keras tests, {sam_tests} built a SAM "
        f"model; {report['seconds']} s ({report['cpu_seconds']} s CPU); "
        f"SAM log keys {report['logs']}"
    )
    assert sam_tests >= MIN_SAM_TESTS, (
        f"only {sam_tests} Keras tests built a SAM model (substituted: "
        f"{report['rebound']})"
    )
    problems = check(report, known_differences.KNOWN[flavour])
    assert not problems, (
        f"{flavour} (SAM log keys {report['logs']}): "
        + "\n".join(problems)
    )
    return report


def sam_building() -> set:
    """The Keras tests that build a SAM model in the `direct` flavour, as
    `sam_building.txt` lists them (the `direct` test keeps it exact)."""
    with open(SAM_BUILDING) as f:
        return {line.strip() for line in f if line.strip()}


SAM_BUILDING = os.path.join(os.path.dirname(__file__), "sam_building.txt")


@pytest.mark.slow  # about 3 CPU-minutes
@pytest.mark.extended  # `make test` runs the listed tests of each flavour
def test_keras_suite_direct(tmp_path):
    """All four files with SAMModel for keras.Model; the tests that built a
    SAM model are exactly those `sam_building.txt` lists, which every
    flavour reruns in `test_keras_suite_flavour` (the other 200 tests use
    Keras' own models: they test Keras against itself)."""
    direct = run_and_check("direct", str(tmp_path))
    built = {k for k, e in direct["tests"].items() if e["sam_models"]}
    listed = sam_building()
    assert built == listed, (
        "the Keras tests that build a SAM model changed; write these lines "
        f"to {SAM_BUILDING}:\n" + "\n".join(sorted(built)))


@pytest.mark.slow  # about 1.2 CPU-minutes each
@pytest.mark.parametrize("flavour", ["direct", "subclassed", "from_model"])
def test_keras_suite_flavour(tmp_path, flavour):
    """The tests that build a SAM model under `direct` (the others use
    Keras' own Trainer-mixin models, Sequential or Functional, the same in
    every flavour: running them again would test Keras against itself),
    and the flavour's known differences."""
    only = sorted(sam_building()) + sorted(known_differences.KNOWN[flavour])
    run_and_check(flavour, str(tmp_path), only=only, min_tests=MIN_SAM_TESTS)


def _report(outcomes):
    return {
        "tests": {
            key: {"outcome": outcome, "message": message, "sam_models": 1}
            for key, (outcome, message) in outcomes.items()
        }
    }


def test_check_is_strict():
    """The accounting itself: each way a run can disagree with its list."""
    known = {
        "a.py::test_fixed": known_differences.Known("defect", "", "Boom"),
        "a.py::test_other*": known_differences.Known("defect", "", "Boom"),
        "a.py::test_gone": known_differences.Known("intended", "", "x"),
        "a.py::test_known": known_differences.Known("defect", "", "Boom"),
    }
    report = _report({
        "a.py::test_fixed": ("passed", ""),
        "a.py::test_other_1": ("failed", "ValueError: something else"),
        "a.py::test_known": ("failed", "RuntimeError: Boom"),
        "a.py::test_new": ("failed", "TypeError: new"),
        "a.py::test_fine": ("passed", ""),
        "a.py::test_skipped": ("skipped", "not here"),
    })
    problems = check(report, known)
    assert len(problems) == 4, problems
    assert any("stale entry" in p and "test_gone" in p for p in problems)
    assert any("remove its entry" in p and "test_fixed" in p
               for p in problems)
    assert any("another reason" in p and "test_other_1" in p
               for p in problems)
    assert any("unexpected failure" in p and "test_new" in p
               for p in problems)


def test_known_differences_are_well_formed():
    """Every entry has a kind, a reason and a valid expression."""
    kinds = {"defect", "intended"}
    assert set(known_differences.KNOWN) == set(plugin.FLAVOURS)
    for flavour, entries in known_differences.KNOWN.items():
        for pattern, entry in entries.items():
            assert entry.kind in kinds, (flavour, pattern)
            assert entry.reason, (flavour, pattern)
            re.compile(entry.match)
            assert pattern.split("::")[0] in plugin.KERAS_TEST_FILES
