"""m-sharpness: test error against rho for several group sizes m.

Foret et al. (2021) section 4.1 and figure 3 (middle): SAM's perturbation
computed independently on disjoint groups of m examples; smaller m tends
to generalise better. Each (m, rho) trains from the same initial weights on
the same batches (`SAMModel(m=...)`; m equal to the batch size is plain
per-batch SAM, m = 1 is 1-SAM); rho = 0 is the SGD baseline, shared by
every m.

Usage (digits, offline; the committed README table):

    python -m experiments.m_sharpness --workdir=runs/experiments

On CIFAR-10 with a WideResNet-16-2, for users with the tfds data:

    python -m experiments.m_sharpness --workdir=runs/experiments \
        --config=m_sharpness_cifar10

Writes `<workdir>/<run name>/{runs.csv,history.csv,results.csv,
error_vs_rho.png}`.
"""

import dataclasses

from experiments import cli
from experiments import common
from experiments import results
from experiments import study


@dataclasses.dataclass
class Config(common.BaseConfig):
    """The m-sharpness grid: group sizes, rhos, and optional label noise."""

    ms: tuple = (1, 4, 16, 64)
    rhos: tuple = (0.02, 0.05, 0.1, 0.2, 0.5)
    noise_rate: float = 0.0  # Foret et al. figure 3 trains on clean labels.

    def run_name(self) -> str:
        ms = "-".join(str(m) for m in self.ms)
        rhos = "-".join(f"{r:g}" for r in self.rhos)
        name = f"{self.base_name()}_m{ms}_rho{rhos}"
        if self.noise_rate:
            name += f"_noise{self.noise_rate:g}"
        return f"{name}_{self.seeds_name()}"


def methods_for(config: Config) -> list:
    """SGD (rho = 0), then SAM for every m and rho."""
    for m in config.ms:
        if config.batch_size % m:
            raise ValueError(
                f"m={m} does not divide batch_size={config.batch_size}: "
                "every group must hold m examples."
            )
    methods = [common.Method("sgd", "SGD", columns={"m": "", "rho": 0.0})]
    for m in config.ms:
        for rho in config.rhos:
            # m equal to the batch is the plain SAM step (one group).
            options = {"rho": rho, "m": None if m == config.batch_size else m}
            methods.append(common.Method(
                f"m{m}_rho{rho:g}", f"m={m}", sam=options,
                columns={"m": m, "rho": rho},
            ))
    return methods


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Trains SGD and SAM for every m and rho and seed; writes the results.

    Returns:
        A dict with `run_dir`, `runs` and `results` (mean and 95% interval
        of test error per m and rho).
    """
    return study.run(
        config, workdir, trials=_trials, tabulate=_tabulate,
        figure="error_vs_rho.png", plot=_plot, report=report,
    )


def _trials(config, data, seed):
    yield study.noise_trial(config, data, seed, methods_for(config))


def _tabulate(config, runs):
    """Test error (1 - accuracy) per m and rho; adds it to `runs` too."""
    for row in runs:
        for kind in ("best", "final"):
            if row["status"] == "ok":
                row[f"{kind}_test_err"] = 1.0 - row[f"{kind}_test_acc"]
    return results.aggregate(
        runs, ("m", "rho"),
        ("final_test_err", "best_test_err", "final_sharpness", "seconds"),
    )


def report(table, config: Config, seconds: float, run_dir: str) -> str:
    """Final test error (%) per m (rows) and rho (columns)."""
    index = {(e["m"], e["rho"]): e for e in table}
    sgd = index.get(("", 0.0))
    header = ["m"] + [f"rho={r:g}" for r in config.rhos]
    lines = [
        f"\n{config.dataset}, {config.model}, {config.noise_rate:.0%} label "
        f"noise, batch {config.batch_size}, {config.epochs} epochs, seeds "
        f"{list(config.seeds)}: test error (%), mean ± 95% t-interval"
    ]
    for metric, title in (("final_test_err", "final"),
                          ("best_test_err", "best (early stopping)")):
        body = [
            [str(m)] + [results.cell(index[(m, r)], metric)
                        for r in config.rhos]
            for m in config.ms
        ]
        lines += [f"\n{title}:", results.format_table(header, body)]
        if sgd is not None:
            lines.append(f"SGD (rho = 0): {results.cell(sgd, metric)}")
    return results.join_report(lines, table, seconds, run_dir)


def _plot(path, table, history, config):
    plt = results.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    sam = [e for e in table if e["m"] != ""]
    sgd = [e for e in table if e["m"] == "" and e["status"] == "ok"]
    for ax, (metric, title) in zip(
        axes, (("final_test_err", "final"), ("best_test_err", "best"))
    ):
        results.plot_lines(ax, sam, "rho", "m", metric, scale=100.0)
        if sgd:
            ax.axhline(100 * sgd[0][f"{metric}_mean"], color="k",
                       linestyle="--", label="SGD")
            ax.legend(fontsize=8, title="m")
        # Log axes: diverged runs (error ~90%) stay on the plot without
        # flattening the differences of a few tenths of a percent.
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(config.rhos), [f"{r:g}" for r in config.rhos])
        ax.minorticks_off()
        ax.set_xlabel("rho")
        ax.set_title(f"{title} test error")
    results.save_figure(
        fig, path, ylabel="test error (%, log scale)",
        title=f"m-sharpness: {config.dataset}, {config.model}, batch "
        f"{config.batch_size}, {config.noise_rate:.0%} noise, "
        f"{len(config.seeds)} seeds",
    )


if __name__ == "__main__":
    cli.main(train_and_evaluate, default_config="m_sharpness")
