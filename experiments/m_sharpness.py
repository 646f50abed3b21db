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
import os
import time

from experiments import cli
from experiments import common
from experiments import results
from keras_sam import noise


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
    run_dir = os.path.join(workdir, config.run_name())
    start = time.perf_counter()
    strategy = common.make_strategy(config.strategy, config.tpu)
    runs, history = [], []
    with common.dtype_policy(config.mixed_precision):
        for seed in config.seeds:
            data = common.load_data(config, seed)
            labels = noise.symmetric_noise(
                data.y_train, config.noise_rate, data.num_classes, seed=seed
            ).labels
            print(f"seed {seed}")
            rows, curves = common.run_methods(
                config, data, methods_for(config), labels, seed, strategy,
                columns={"noise_rate": config.noise_rate},
            )
            runs += rows
            history += curves
    for row in runs:
        for kind in ("best", "final"):
            if row["status"] == "ok":
                row[f"{kind}_test_err"] = 1.0 - row[f"{kind}_test_acc"]
    table = results.aggregate(
        runs, ("m", "rho"),
        ("final_test_err", "best_test_err", "final_sharpness", "seconds"),
    )
    results.write_csv(os.path.join(run_dir, "runs.csv"), runs)
    results.write_csv(os.path.join(run_dir, "history.csv"), history)
    results.write_csv(os.path.join(run_dir, "results.csv"), table)
    _plot(os.path.join(run_dir, "error_vs_rho.png"), table, config)
    print(report(table, config, time.perf_counter() - start, run_dir))
    return {"run_dir": run_dir, "runs": runs, "results": table}


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
    lines += [f"note: {n}" for n in results.skip_notes(table)]
    lines.append(f"\n{seconds:.0f} s; results in {run_dir}/")
    return "\n".join(lines)


def _plot(path, table, config):
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
    axes[0].set_ylabel("test error (%, log scale)")
    fig.suptitle(
        f"m-sharpness: {config.dataset}, {config.model}, batch "
        f"{config.batch_size}, {config.noise_rate:.0%} noise, "
        f"{len(config.seeds)} seeds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    cli.main(train_and_evaluate, default_config="m_sharpness")
