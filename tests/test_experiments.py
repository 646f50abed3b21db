"""One tiny epoch of every study on digits and on mock tfds data.

The studies are imported as modules (they define no absl flag unless run as
programs); experiments/noisy_labels.py, which defines flags at import, is
never imported here.
"""

import dataclasses
import math
import os

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import ablations
from experiments import baek_table1
from experiments import cli
from experiments import common
from experiments import data as data_lib
from experiments import m_sharpness
from experiments import noise_robustness
from experiments import results

TINY = {"epochs": 1, "seeds": (0,), "train_size": 32, "test_size": 16,
        "batch_size": 16, "model_kwargs": {"hidden_units": 16}}
MOCK = {**TINY, "dataset": "cifar10", "model": "small_cnn",
        "model_kwargs": {"filters": 4}}


def _check_outputs(out, files):
    for name in files:
        path = os.path.join(out["run_dir"], name)
        assert os.path.getsize(path) > 0, path
    runs = results.read_csv(os.path.join(out["run_dir"], "runs.csv"))
    assert len(runs) == len(out["runs"])
    for row in out["runs"]:
        assert row["status"] == "ok", row
        assert 0.0 <= row["best_test_acc"] <= 1.0
        assert row["best_test_acc"] >= row["final_test_acc"]


@pytest.mark.slow  # end-to-end study run
def test_cheap_sam_config_runs_every_member(tmp_path):
    config = cli.load_config("cheap_sam")
    config = dataclasses.replace(config, **TINY)
    out = noise_robustness.train_and_evaluate(config, str(tmp_path))
    _check_outputs(out, ["runs.csv", "results.csv"])
    assert [r["key"] for r in out["runs"]] == [
        "sgd", "sam", *noise_robustness.CHEAP_SAM]
    assert config.run_name().endswith("_cheap_msam2_seeds0")
    methods = noise_robustness.methods_for(config, 0.4, total_steps=20)
    sam = {m.key: m.sam for m in methods}
    assert sam["late_sam"] == {"rho": 0.2, "sam_from": 0.5, "total_steps": 20}
    # Momentum-SAM at its own radius (Config.msam_rho), every other at rho.
    assert sam["msam"] == {"rho": 2.0, "perturbation": "momentum"}
    assert {r["key"]: r.get("rho") for r in out["runs"]}["msam"] == 2.0


def test_noise_robustness_digits(tmp_path):
    config = noise_robustness.Config(
        **TINY, noise_rates=(0.8,), high_noise_rho=0.05,
        methods=("boot_sam", "sgd", "sam", "mixup", "boot_sgd"),
    )
    out = noise_robustness.train_and_evaluate(config, str(tmp_path))
    assert os.path.basename(out["run_dir"]) == config.run_name()
    _check_outputs(out, ["runs.csv", "history.csv", "results.csv",
                         "accuracy_vs_noise.png"])
    assert len(out["runs"]) == 5 and len(out["results"]) == 5
    # Bootstrap sources train first; rho follows the noise level.
    assert [r["key"] for r in out["runs"]] == [
        "sgd", "sam", "mixup", "boot_sam", "boot_sgd"]
    assert {r["key"]: r.get("rho") for r in out["runs"]}["sam"] == 0.05
    history = results.read_csv(os.path.join(out["run_dir"], "history.csv"))
    assert len(history) == 5  # one epoch per method
    table = noise_robustness.report(out["results"], config, 1.0, "x")
    assert "Bootstrap + SAM" in table and "80% noise" in table


@pytest.mark.slow  # end-to-end study run
def test_noise_robustness_high_noise_rho():
    config = noise_robustness.Config(rho=0.1, high_noise_rho=0.05)
    by_key = {m.key: m for m in noise_robustness.methods_for(config, 0.8)}
    assert by_key["sam"].sam == {"rho": 0.05}
    low = {m.key: m for m in noise_robustness.methods_for(config, 0.6)}
    assert low["sam"].sam == {"rho": 0.1} == low["boot_sam"].sam
    assert by_key["boot_sam"].bootstrap_from == "sam"
    with pytest.raises(ValueError, match="Unknown methods"):
        noise_robustness.methods_for(
            dataclasses.replace(config, methods=("adam",)), 0.2)


@pytest.mark.slow  # end-to-end study run
def test_noise_robustness_mock_tfds(tmp_path):
    config = noise_robustness.Config(
        **MOCK, noise_rates=(0.4,), methods=("sgd", "boot_sgd"),
    )
    with tfds.testing.mock_data(num_examples=64):
        out = noise_robustness.train_and_evaluate(config, str(tmp_path))
    _check_outputs(out, ["runs.csv", "accuracy_vs_noise.png"])


@pytest.mark.slow  # end-to-end study run
def test_m_sharpness_digits(tmp_path):
    config = m_sharpness.Config(**TINY, ms=(1, 16), rhos=(0.2,),
                                noise_rate=0.2)
    out = m_sharpness.train_and_evaluate(config, str(tmp_path))
    _check_outputs(out, ["runs.csv", "history.csv", "results.csv",
                         "error_vs_rho.png"])
    assert [(r["m"], r["rho"]) for r in out["runs"]] == [
        ("", 0.0), (1, 0.2), (16, 0.2)]
    for row in out["runs"]:
        assert math.isclose(row["final_test_err"], 1 - row["final_test_acc"])
    text = m_sharpness.report(out["results"], config, 1.0, "x")
    assert "rho=0.2" in text and "SGD (rho = 0)" in text


def test_m_sharpness_methods():
    config = m_sharpness.Config(batch_size=16, ms=(1, 16), rhos=(0.1,))
    sam = [m.sam for m in m_sharpness.methods_for(config) if m.sam]
    assert sam == [{"rho": 0.1, "m": 1}, {"rho": 0.1, "m": None}]
    with pytest.raises(ValueError, match="does not divide"):
        m_sharpness.methods_for(dataclasses.replace(config, ms=(3,)))


@pytest.mark.extended  # tfds loading: test_noise_robustness_mock_tfds
@pytest.mark.slow  # end-to-end study run
def test_m_sharpness_mock_tfds(tmp_path):
    config = m_sharpness.Config(
        **{**MOCK, "model": "mlp", "model_kwargs": {"hidden_units": 8}},
        ms=(4,), rhos=(0.1,),
    )
    with tfds.testing.mock_data(num_examples=64):
        out = m_sharpness.train_and_evaluate(config, str(tmp_path))
    _check_outputs(out, ["runs.csv", "error_vs_rho.png"])


@pytest.mark.slow  # end-to-end study run
def test_ablations_digits(tmp_path):
    config = ablations.Config(**TINY, ascent_steps=(1, 2),
                              rho_schedules=("constant", "step_decay"))
    out = ablations.train_and_evaluate(config, str(tmp_path))
    _check_outputs(out, ["runs.csv", "history.csv", "results.csv",
                         "ablations.png"])
    keys = [r["key"] for r in out["runs"]]
    assert keys == ["sgd", "sam", "p_inf", "random", "steps2", "step_decay"]
    assert out["groups"]["ascent_steps"] == ["sam", "steps2"]
    sharp = {r["key"]: r["final_sharpness"] for r in out["runs"]}
    assert math.isnan(sharp["sgd"]) and np.isfinite(sharp["sam"])
    grouped = results.read_csv(os.path.join(out["run_dir"], "results.csv"))
    assert {r["group"] for r in grouped} == set(ablations.GROUPS)


@pytest.mark.slow  # end-to-end study run
def test_ablations_p_inf_radius_matches_p2():
    config = ablations.Config(rho=0.2, groups=("perturbation",))
    methods, shown = ablations.methods_for(config, num_weights=400)
    p_inf = {m.key: m for m in methods}["p_inf"].sam
    # ||rho_inf sign(g)||_2 = rho_inf sqrt(d) = rho.
    assert math.isclose(p_inf["rho"] * math.sqrt(400), 0.2)
    assert shown == {"perturbation": ["sgd", "sam", "p_inf", "random"]}


@pytest.mark.slow  # end-to-end study run
def test_ablations_step_increase_ends_at_rho():
    config = ablations.Config(rho=0.2, groups=("rho_schedule",),
                              rho_schedules=("step_increase",))
    methods, _ = ablations.methods_for(config, num_weights=1)
    increase = {m.key: m for m in methods}["step_increase"]
    assert math.isclose(increase.sam["rho"], 0.002)
    assert increase.rho_schedule == {"name": "step_increase"}
    config = dataclasses.replace(config, increase_from=0.1)
    methods, _ = ablations.methods_for(config, num_weights=1)
    assert {m.key: m for m in methods}["step_increase"].sam["rho"] == 0.1


@pytest.mark.extended  # tfds loading: test_noise_robustness_mock_tfds
@pytest.mark.slow  # end-to-end study run
def test_ablations_mock_tfds(tmp_path):
    config = ablations.Config(
        **{**MOCK, "dataset": "fashion_mnist", "model": "mlp",
           "model_kwargs": {"hidden_units": 8}},
        groups=("rho_schedule",), rho_schedules=("exp_decay",),
    )
    with tfds.testing.mock_data(num_examples=64):
        out = ablations.train_and_evaluate(config, str(tmp_path))
    _check_outputs(out, ["runs.csv", "ablations.png"])


@pytest.mark.slow  # end-to-end study run
def test_baek_table1_digits(tmp_path):
    config = baek_table1.Config(**{**TINY, "model": "mlp_ln",
                                   "model_kwargs": {"hidden_units": 8}})
    out = baek_table1.train_and_evaluate(config, str(tmp_path))
    _check_outputs(out, ["runs.csv", "history.csv", "results.csv",
                         "baek_table1.png"])
    assert [r["method"] for r in out["runs"]] == [
        "SGD", "1-SAM", "L-SAM", "J-SAM", "SGD + reg."]
    history = results.read_csv(os.path.join(out["run_dir"], "history.csv"))
    assert all(0 <= float(r["train_noisy_accuracy"]) <= 1 for r in history)
    assert "69.5" in baek_table1.report(out["results"], config, 1.0, "x")


@pytest.mark.extended  # tfds loading: test_noise_robustness_mock_tfds
@pytest.mark.slow  # end-to-end study run
def test_baek_table1_mock_tfds(tmp_path):
    config = baek_table1.Config(
        **{**MOCK, "dataset": "svhn_cropped", "model": "mlp_ln",
           "model_kwargs": {"hidden_units": 8}},
        methods=("reg_sgd",),
    )
    with tfds.testing.mock_data(num_examples=64):
        out = baek_table1.train_and_evaluate(config, str(tmp_path))
    _check_outputs(out, ["runs.csv", "baek_table1.png"])


# ------------------------------------------- skips, strategy, precision


@pytest.mark.slow  # end-to-end study run
def test_unsupported_options_are_skipped():
    data = data_lib.load("digits", train_size=32, test_size=16)
    config = noise_robustness.Config(**{**TINY, "train_size": 32})
    methods = [
        common.Method("new", "new", sam={"rho": 0.1, "no_such_option": 1}),
        common.Method("boot", "boot", bootstrap_from="new"),
    ]
    lines = []
    rows, history = common.run_methods(
        config, data, methods, data.y_train, 0,
        common.make_strategy(), log=lines.append,
    )
    assert history == []
    assert "no_such_option" in rows[0]["status"]
    assert "'new', which did not run" in rows[1]["status"]
    assert all(r["status"].startswith("skipped") for r in rows)
    table = results.aggregate(rows, ("method",), ("final_test_acc",))
    assert results.cell(table[0], "final_test_acc") == "skipped"
    assert len(results.skip_notes(table)) == 2 and len(lines) == 2


@pytest.mark.slow  # end-to-end study run
def test_runs_do_not_depend_on_earlier_methods():
    data = data_lib.load("digits", train_size=32, test_size=16)
    config = noise_robustness.Config(**TINY)
    sgd = common.Method("sgd", "SGD")
    mixup = common.Method("mixup", "Mixup", mixup_alpha=1.0)
    strategy = common.make_strategy()
    _, alone = common.run_methods(config, data, [sgd], data.y_train, 3,
                                  strategy, log=lambda line: None)
    _, after = common.run_methods(config, data, [mixup, sgd], data.y_train,
                                  3, strategy, log=lambda line: None)
    assert alone[0]["loss"] == after[1]["loss"]
    assert alone[0]["val_accuracy"] == after[1]["val_accuracy"]


def test_sam_supports():
    assert common.sam_supports({"rho": 0.1, "m": 4, "p": 2.0}) is None
    assert "bogus" in common.sam_supports({"bogus": 1})


@pytest.mark.slow  # end-to-end study run
def test_mirrored_strategy(tmp_path):
    config = noise_robustness.Config(
        **TINY, noise_rates=(0.4,), methods=("sgd",), strategy="mirrored"
    )
    out = noise_robustness.train_and_evaluate(config, str(tmp_path))
    assert "_mirrored_" in os.path.basename(out["run_dir"])
    assert out["runs"][0]["status"] == "ok"


@pytest.mark.slow  # end-to-end study run
def test_mixed_precision_policy_is_restored(tmp_path):
    config = noise_robustness.Config(
        **TINY, noise_rates=(0.4,), methods=("sam",),
        mixed_precision="mixed_bfloat16",
    )
    out = noise_robustness.train_and_evaluate(config, str(tmp_path))
    assert all(r["status"] == "ok" for r in out["runs"])
    assert keras.mixed_precision.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match="mixed precision"):
        with common.dtype_policy("float8"):
            pass


def test_make_strategy():
    assert common.make_strategy("mirrored").num_replicas_in_sync == 4
    with pytest.raises(ValueError, match="Unknown strategy"):
        common.make_strategy("horovod")


# ------------------------------------------------------ configs and cli


CONFIGS = {
    "noise_robustness": noise_robustness.Config,
    "noise_robustness_cifar10": noise_robustness.Config,
    "m_sharpness": m_sharpness.Config,
    "m_sharpness_cifar10": m_sharpness.Config,
    "m_sharpness_noisy": m_sharpness.Config,
    "ablations": ablations.Config,
    "ablations_cifar10": ablations.Config,
    "baek_table1": baek_table1.Config,
    "baek_table1_cifar10": baek_table1.Config,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_load(name):
    config = cli.load_config(name)
    assert type(config) is CONFIGS[name]
    assert config.run_name().startswith(f"{config.dataset}_{config.model}")
    if name.endswith("cifar10"):
        assert config.dataset == "cifar10" and config.epochs == 200


def test_load_config_from_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from experiments.configs import ablations\n"
        "def get_config():\n"
        "    return ablations.get_config()\n"
    )
    assert isinstance(cli.load_config(str(path)), ablations.Config)
    with pytest.raises(FileNotFoundError):
        cli.load_config(str(tmp_path / "missing.py"))


def test_apply_overrides():
    config = cli.apply_overrides(
        m_sharpness.Config(),
        ["epochs=3", "rhos=[0.1, 0.2]", "dataset=svhn_cropped",
         "augment=False", "model_kwargs={'depth': 16}"],
    )
    assert config.epochs == 3 and config.rhos == (0.1, 0.2)
    assert config.dataset == "svhn_cropped" and config.augment is False
    assert config.model_kwargs == {"depth": 16}
    with pytest.raises(ValueError, match="Bad override"):
        cli.apply_overrides(config, ["epoch=3"])
