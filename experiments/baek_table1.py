"""Baek et al. (2024) table 1: 1-SAM, L-SAM, J-SAM, SGD, regularised SGD.

At 30% symmetric label noise, with a LayerNorm model (1-SAM perturbs each
example on its own, so BatchNorm is out): SGD; 1-SAM (`m=1`, eq. 2.6);
Logit-SAM (only the logit-scale factor at w + eps_i, eq. 2.8); Jacobian-SAM
(only the Jacobian at w + eps_i, eq. 2.9); and SGD with Baek et al.'s
last-layer penalties gamma_z mean ||z|| + gamma_v ||v||^2 (eq. 4.5). The
paper reports the best test accuracy (1-SAM 69.5%, J-SAM 69.2%, L-SAM 54.1%,
SGD 52.5%, regularised SGD 60.8% on CIFAR-10 with ResNet-18): J-SAM
recovers 1-SAM, L-SAM barely helps. Each epoch also records training
accuracy on the clean and on the noisy examples (figures 1-2): SAM fits the
clean examples first and delays memorising the noisy ones.

Usage (digits, offline; the committed README table):

    python -m experiments.baek_table1 --workdir=runs/experiments

The paper's setting, for users with the tfds data (ResNet-18 with
LayerNorm, 200 epochs):

    python -m experiments.baek_table1 --workdir=runs/experiments \
        --config=baek_table1_cifar10

Writes `<workdir>/<run name>/{runs.csv,history.csv,results.csv,
baek_table1.png}`.
"""

import dataclasses

import numpy as np

from experiments import cli
from experiments import common
from experiments import results
from experiments import study

# Baek et al. table 1 (best test accuracy, %, CIFAR-10, 30% noise).
PAPER = {
    "1-SAM": 69.47,
    "L-SAM": 54.13,
    "J-SAM": 69.17,
    "SGD": 52.48,
    "SGD + reg.": 60.8,
}


@dataclasses.dataclass
class Config(common.BaseConfig):
    """Baek et al.'s comparison."""

    noise_rate: float = 0.3
    rho: float = 0.01
    gamma_z: float = 0.01
    gamma_v: float = 0.01
    methods: tuple = ("sgd", "one_sam", "l_sam", "j_sam", "reg_sgd")
    noise_curves: bool = True

    def run_name(self) -> str:
        return (
            f"{self.base_name()}_noise{self.noise_rate:g}_rho{self.rho:g}"
            f"_gz{self.gamma_z:g}_gv{self.gamma_v:g}_{self.seeds_name()}"
        )


def methods_for(config: Config) -> list:
    rho = config.rho
    every = {
        "sgd": common.Method("sgd", "SGD"),
        "one_sam": common.Method("one_sam", "1-SAM",
                                 sam={"rho": rho, "m": 1}),
        "l_sam": common.Method(
            "l_sam", "L-SAM", sam={"rho": rho, "m": 1,
                                   "gradient_rule": "logit"}),
        "j_sam": common.Method(
            "j_sam", "J-SAM", sam={"rho": rho, "m": 1,
                                   "gradient_rule": "jacobian"}),
        "reg_sgd": common.Method(
            "reg_sgd", "SGD + reg.",
            regularization={"gamma_z": config.gamma_z,
                            "gamma_v": config.gamma_v}),
    }
    unknown = set(config.methods) - set(every)
    if unknown:
        raise ValueError(
            f"Unknown methods {sorted(unknown)}: use {sorted(every)}."
        )
    return [every[key] for key in config.methods]


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Trains the five methods for every seed; writes the results.

    Returns:
        A dict with `run_dir`, `runs` and `results`.
    """
    return study.run(
        config, workdir, trials=_trials, tabulate=_tabulate,
        figure="baek_table1.png", plot=_plot, report=report,
    )


def _trials(config, data, seed):
    yield study.noise_trial(
        config, data, seed, methods_for(config), curves=config.noise_curves
    )


def _tabulate(config, runs):
    return results.aggregate(
        runs, ("method",), ("best_test_acc", "final_test_acc", "seconds")
    )


def report(table, config, seconds, run_dir) -> str:
    header = ["method", "best acc", "final acc", "s/run",
              "paper best (CIFAR-10)"]
    body = [
        [e["method"], results.cell(e, "best_test_acc"),
         results.cell(e, "final_test_acc"),
         f"{e['seconds_mean']:.1f}" if e["status"] == "ok" else "-",
         f"{PAPER.get(e['method'], float('nan')):.1f}"]
        for e in table
    ]
    lines = [
        f"\n{config.dataset}, {config.model}, {config.noise_rate:.0%} label "
        f"noise, rho {config.rho:g}, gamma_z {config.gamma_z:g}, gamma_v "
        f"{config.gamma_v:g}, {config.epochs} epochs, seeds "
        f"{list(config.seeds)}: clean test accuracy (%), mean ± 95% "
        "t-interval",
        results.format_table(header, body),
    ]
    return results.join_report(lines, table, seconds, run_dir)


def _curves(history, key):
    """Mean over seeds of `key` per method and epoch: {method: (ep, y)}."""
    by_method = {}
    for row in history:
        if key in row:
            by_method.setdefault(row["method"], {}).setdefault(
                row["epoch"], []).append(row[key])
    return {
        m: (sorted(e), [float(np.mean(e[k])) for k in sorted(e)])
        for m, e in by_method.items()
    }


def _plot(path, table, history, config):
    """Baek et al. figures 1-2: test, clean-train and noisy-train accuracy."""
    plt = results.pyplot()
    panels = [("val_accuracy", "clean test accuracy")]
    if config.noise_curves:
        panels += [
            ("train_clean_accuracy", "training accuracy, clean examples"),
            ("train_noisy_accuracy",
             "training accuracy, noisy examples (memorised)"),
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4),
                             squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for method, (epochs, values) in _curves(history, key).items():
            ax.plot(epochs, values, label=method)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    title = (f"Baek et al. table 1: {config.dataset}, {config.model}, "
             f"{config.noise_rate:.0%} noise")
    results.save_figure(fig, path, title, legend=True,
                        ylabel="accuracy (mean over seeds)")


if __name__ == "__main__":
    cli.main(train_and_evaluate, default_config="baek_table1")
