"""Smoke tests of the CLI tools/search_rho.py (mock tfds data, digits)."""

import csv
import importlib.util
import pathlib

import pytest
import tensorflow_datasets as tfds
from absl import flags

from keras_sam import tuning

_PATH = pathlib.Path(__file__).parents[1] / "tools" / "search_rho.py"
_SPEC = importlib.util.spec_from_file_location("search_rho", _PATH)
search_rho = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(search_rho)


def run_cli(argv):
    """Parses `argv` with the tool's flags, then runs it like `main` does.

    The flags live in a private `FlagValues`, so that this test never
    clashes with other modules' flags in the global registry.
    """
    flag_values = flags.FlagValues()
    search_rho.define_flags(flag_values)
    flag_values(["search_rho.py", *argv])
    return search_rho.search_and_report(
        search_rho.config_from_flags(flag_values)
    )


def read_results(output_dir):
    (run_dir,) = [p for p in pathlib.Path(output_dir).iterdir() if p.is_dir()]
    with open(run_dir / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    return run_dir, rows


@pytest.mark.slow  # end-to-end CLI run
@pytest.mark.parametrize("search", ["grid", "bayesian"])
def test_cli_on_mock_tfds(search, tmp_path, capsys):
    with tfds.testing.mock_data(num_examples=40):
        run_cli([
            f"--search={search}", "--dataset=cifar10", "--trials=1",
            "--epochs=1", "--batch_size=16", "--hidden_units=8",
            "--noise_rate=0.4", f"--output_dir={tmp_path}",
        ])
    run_dir, rows = read_results(tmp_path)
    assert run_dir.name.startswith(f"{search}_cifar10_noise0.4_")
    assert len(rows) == 1 and rows[0]["status"] == "COMPLETED"
    rho = float(rows[0]["rho"])
    if search == "grid":
        assert rho == tuning.PAPER_GRID[0]
    else:
        assert tuning.BAYESIAN_RHO_RANGE[0] <= rho <= tuning.BAYESIAN_RHO_RANGE[1]
    assert 0.0 <= float(rows[0]["test_accuracy"]) <= 1.0
    png = run_dir / "val_accuracy_vs_rho.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert f"best rho = {rho:.4g}" in out and "trial_id" in out


@pytest.mark.slow  # end-to-end CLI run
def test_cli_on_digits_cnn(tmp_path, capsys):
    run_cli([
        "--search=grid", "--rho_values=0.05,0.5", "--epochs=1",
        "--model=cnn", "--hidden_units=8", f"--output_dir={tmp_path}",
    ])
    _, rows = read_results(tmp_path)
    assert [float(r["rho"]) for r in rows] == [0.05, 0.5]
    assert "best rho" in capsys.readouterr().out


def test_cli_requires_search_and_output_dir(tmp_path):
    with pytest.raises(flags.IllegalFlagValueError, match="search"):
        run_cli([f"--output_dir={tmp_path}"])
    with pytest.raises(flags.IllegalFlagValueError, match="output_dir"):
        run_cli(["--search=grid"])


def test_importing_the_tool_defines_no_global_flags():
    assert "search" not in flags.FLAGS and "rho_values" not in flags.FLAGS
