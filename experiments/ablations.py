"""Ablations of SAM's step: perturbation geometry, ascent steps, rho schedules.

- perturbation (Foret et al. appendix C.5, figure 6): p = 2 (SAM), p = inf
  (eps = rho sign(g)) and a random direction of norm rho;
- ascent steps (appendix C.6, table 12): 1, 2, 3, 5 projected-gradient
  steps, with the final sharpness estimate L(w + eps) - L(w) that SAMModel
  reports (it grows with the steps in the paper);
- rho schedules (Alexandru, section 4.3): constant, step decay (x0.1 at 30%
  and 60% of training), exponential decay (rho_0 exp(-k t)), step increase
  (x10 at the same points; by default from rho / 100, so that it ends at
  rho: from rho it would reach 100 rho), cosine.

The reference SAM run (p = 2, one step, constant rho) is trained once and
shown in every group, with SGD for orientation. Foret et al. ran C.5 and
C.6 on clean CIFAR; the digits default adds 40% label noise, where SAM's
effect on this small data set is large enough to compare variants.

For p = inf, rho is by default rho / sqrt(number of weights), so that eps
has the Euclidean norm of the p = 2 perturbation (rho sign(g) with the same
rho would be sqrt(d) times larger).

Usage (digits, offline; the committed README table):

    python -m experiments.ablations --workdir=runs/experiments

Writes `<workdir>/<run name>/{runs.csv,history.csv,results.csv,
ablations.png}`.
"""

import dataclasses
import math
from typing import Optional

from experiments import cli
from experiments import common
from experiments import models
from experiments import results
from experiments import study

GROUPS = ("perturbation", "ascent_steps", "rho_schedule")


@dataclasses.dataclass
class Config(common.BaseConfig):
    """The ablation grid."""

    noise_rate: float = 0.4
    rho: float = 0.2
    rho_inf: float = 0.0  # 0: rho / sqrt(#weights), the p = 2 radius.
    ascent_steps: tuple = (1, 2, 3, 5)
    rho_schedules: tuple = (
        "constant", "step_decay", "exp_decay", "step_increase", "cosine"
    )
    rho_k: float = 0.1  # exponential decay rate per epoch (Alexandru eq. 3)
    # Initial rho of the step increase (x10 twice). None: rho / 100, so that
    # it ends at rho. Alexandru starts every schedule at rho (0.1 -> 10).
    increase_from: Optional[float] = None
    groups: tuple = GROUPS

    def run_name(self) -> str:
        return (
            f"{self.base_name()}_noise{self.noise_rate:g}_rho{self.rho:g}"
            f"_{self.seeds_name()}"
        )


def methods_for(config: Config, num_weights: int) -> tuple:
    """(methods, groups): unique `Method`s and the keys shown per group."""
    unknown = set(config.groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"Unknown groups {sorted(unknown)}: use {GROUPS}.")
    rho = config.rho
    rho_inf = config.rho_inf or rho / math.sqrt(num_weights)
    methods = {
        "sgd": common.Method("sgd", "SGD"),
        "sam": common.Method("sam", "SAM (p=2, 1 step, constant)",
                             sam={"rho": rho}),
    }
    shown = {}
    if "perturbation" in config.groups:
        methods["p_inf"] = common.Method(
            "p_inf", f"p=inf (rho={rho_inf:.2g})",
            sam={"rho": rho_inf, "p": math.inf},
        )
        methods["random"] = common.Method(
            "random", "random direction",
            sam={"rho": rho, "perturbation": "random"},
        )
        shown["perturbation"] = ["sgd", "sam", "p_inf", "random"]
    if "ascent_steps" in config.groups:
        keys = []
        for steps in config.ascent_steps:
            key = "sam" if steps == 1 else f"steps{steps}"
            if steps != 1:
                methods[key] = common.Method(
                    key, f"{steps} ascent steps",
                    sam={"rho": rho, "ascent_steps": steps},
                )
            keys.append(key)
        shown["ascent_steps"] = keys
    if "rho_schedule" in config.groups:
        keys = []
        for name in config.rho_schedules:
            if name == "constant":
                keys.append("sam")
                continue
            options = {"name": name}
            start = rho
            if name == "exp_decay":
                options["k"] = config.rho_k
            if name == "step_increase":
                start = config.increase_from
                if start is None:
                    start = rho / 100
            methods[name] = common.Method(
                name, f"rho {name} from {start:g}", sam={"rho": start},
                rho_schedule=options,
            )
            keys.append(name)
        shown["rho_schedule"] = keys
    return list(methods.values()), shown


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Trains every variant for every seed on noisy labels; writes results.

    Returns:
        A dict with `run_dir`, `runs`, `results` (per group and method: a
        method shown in several groups has a row in each) and `groups`
        (the method keys shown in each group).
    """
    out = study.run(
        config, workdir, trials=_trials, tabulate=_tabulate,
        figure="ablations.png", plot=_plot, report=report,
    )
    groups = _by_group(out["results"]).items()
    out["groups"] = {g: [e["key"] for e in entries] for g, entries in groups}
    return out


def _trials(config, data, seed):
    num_weights = models.count_trainable(models.build(
        config.model, data.input_shape, data.num_classes,
        **config.model_kwargs,
    ))
    methods, _ = methods_for(config, num_weights)
    yield study.noise_trial(config, data, seed, methods)


def _tabulate(config, runs):
    """Each method's means and intervals, once per group that shows it."""
    table = results.aggregate(
        runs, ("key", "method"),
        ("final_test_acc", "best_test_acc", "final_sharpness", "seconds"),
    )
    index = {e["key"]: e for e in table}
    _, shown = methods_for(config, num_weights=1)  # the keys need no count
    return [
        {"group": group, **index[key]}
        for group, keys in shown.items() for key in keys
    ]


def _by_group(table) -> dict:
    """`{group: [entries]}` of the grouped table, in order."""
    groups = {}
    for entry in table:
        groups.setdefault(entry["group"], []).append(entry)
    return groups


def report(table, config, seconds, run_dir) -> str:
    """One table per group: final/best accuracy, sharpness, time."""
    lines = [
        f"\n{config.dataset}, {config.model}, {config.noise_rate:.0%} label "
        f"noise, rho {config.rho:g}, {config.epochs} epochs, seeds "
        f"{list(config.seeds)}: clean test accuracy (%), mean ± 95% "
        "t-interval"
    ]
    header = ["method", "final acc", "best acc", "final sharpness", "s/run"]
    for group, entries in _by_group(table).items():
        body = [
            [e["method"], results.cell(e, "final_test_acc"),
             results.cell(e, "best_test_acc"),
             results.cell(e, "final_sharpness", scale=1.0, digits=3),
             f"{e['seconds_mean']:.1f}" if e["status"] == "ok" else "-"]
            for e in entries
        ]
        lines += [f"\n{group}:", results.format_table(header, body)]
    return results.join_report(lines, table, seconds, run_dir)


def _plot(path, table, history, config):
    plt = results.pyplot()
    groups = _by_group(table)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4),
                             squeeze=False)
    for ax, (group, entries) in zip(axes[0], groups.items()):
        for offset, (metric, name) in enumerate(
            (("final_test_acc", "final"), ("best_test_acc", "best"))
        ):
            values = [100 * e[f"{metric}_mean"] if e["status"] == "ok"
                      else 0.0 for e in entries]
            errors = [100 * e[f"{metric}_ci95"] if e["status"] == "ok"
                      and not math.isnan(e[f"{metric}_ci95"]) else 0.0
                      for e in entries]
            xs = [i + 0.4 * offset for i in range(len(entries))]
            ax.bar(xs, values, width=0.4, yerr=errors, capsize=3, label=name)
        ax.set_xticks([i + 0.2 for i in range(len(entries))])
        ax.set_xticklabels([e["method"] for e in entries], rotation=30,
                           ha="right", fontsize=7)
        finite = [100 * e["final_test_acc_mean"] for e in entries
                  if e["status"] == "ok"]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 10), 100)
        ax.set_title(group)
        ax.grid(alpha=0.3, axis="y")
    results.save_figure(
        fig, path, ylabel="clean test accuracy (%)", legend=True,
        title=f"SAM ablations: {config.dataset}, {config.model}, "
        f"{config.noise_rate:.0%} noise, {len(config.seeds)} seeds",
    )


if __name__ == "__main__":
    cli.main(train_and_evaluate, default_config="ablations")
