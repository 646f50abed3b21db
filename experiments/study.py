"""One run of a study: every seed's trials, then its CSV files, figure, report.

Every study differs only in what it trains and how it tabulates and draws
the outcome, so its `train_and_evaluate` is one call:

    return study.run(
        config, workdir, trials=_trials, tabulate=_tabulate,
        figure="accuracy_vs_noise.png", plot=_plot, report=report,
    )

`trials(config, data, seed)` yields the `Trial`s of one seed (e.g. one per
noise rate): the methods and the labels they train on. `run` loads each
seed's data, trains every trial's methods with `common.run_methods` under
the config's strategy and dtype policy, and writes `<workdir>/<run name>/`
`runs.csv` (one row per method, trial and seed), `history.csv` (per epoch),
`results.csv` (the study's table, e.g. means and 95% t-intervals over
seeds) and the figure, then prints the report.
"""

import dataclasses
import os
import time
from typing import Callable, Iterable

from experiments import common
from experiments import results
from keras_sam import noise


@dataclasses.dataclass(frozen=True)
class Trial:
    """Methods trained from one seed's weights on one set of labels.

    Attributes:
        title: Progress line printed before the trial, e.g. "seed 0".
        methods: Sequence of `common.Method`, trained in order.
        noisy: The `keras_sam.noise.NoisyLabels` whose `labels` they train
            on.
        columns: Extra columns of every row (e.g. the noise rate).
        curves: Boolean; record `NoiseMonitor`'s clean and noisy training
            accuracy per epoch into the history.
    """

    title: str
    methods: list
    noisy: object
    columns: dict = dataclasses.field(default_factory=dict)
    curves: bool = False


def noise_trial(config, data, seed, methods, rate=None, title=None,
                curves=False) -> Trial:
    """`methods` on the training labels with symmetric noise at `rate`.

    Args:
        config: The study's config; `rate` defaults to `config.noise_rate`.
        data: The seed's `experiments.data.Data`.
        seed: Integer seed of the noise.
        methods: Sequence of `common.Method`.
        rate: Optional float, the noise rate (the rows' `noise_rate`).
        title: Optional progress line; defaults to "seed <seed>".
        curves: Boolean, `Trial.curves`.
    """
    rate = config.noise_rate if rate is None else rate
    noisy = noise.symmetric_noise(
        data.y_train, rate, data.num_classes, seed=seed
    )
    return Trial(
        title or f"seed {seed}", list(methods), noisy,
        columns={"noise_rate": rate}, curves=curves,
    )


def run(
    config,
    workdir: str,
    trials: Callable[..., Iterable[Trial]],
    tabulate: Callable,
    figure: str,
    plot: Callable,
    report: Callable,
) -> dict:
    """Trains every seed's trials; writes the CSV files and the figure.

    Args:
        config: The study's config (`common.BaseConfig` subclass);
            `config.run_name()` names the run directory.
        workdir: Directory under which the run directory is created.
        trials: `trials(config, data, seed)` yields the `Trial`s of one
            seed, given its `experiments.data.Data`.
        tabulate: `tabulate(config, runs)` returns the rows of results.csv
            from the rows of runs.csv (which it may extend).
        figure: File name of the figure in the run directory.
        plot: `plot(path, table, history, config)` draws the figure.
        report: `report(table, config, seconds, run_dir)` returns the text
            printed at the end.

    Returns:
        A dict with `run_dir`, `runs` (one row per method, trial and seed)
        and `results` (the rows of results.csv).
    """
    run_dir = os.path.join(workdir, config.run_name())
    start = time.perf_counter()
    runs, history = train_trials(config, trials)
    table = tabulate(config, runs)
    for name, rows in (("runs", runs), ("history", history),
                       ("results", table)):
        results.write_csv(os.path.join(run_dir, f"{name}.csv"), rows)
    plot(os.path.join(run_dir, figure), table, history, config)
    print(report(table, config, time.perf_counter() - start, run_dir))
    return {"run_dir": run_dir, "runs": runs, "results": table}


def train_trials(config, trials, log: Callable = print) -> tuple:
    """`(runs, history)`: the rows of every seed's trials, in order."""
    strategy = common.make_strategy(config.strategy, config.tpu)
    runs, history = [], []
    with common.dtype_policy(config.mixed_precision):
        for seed in config.seeds:
            data = common.load_data(config, seed)
            for trial in trials(config, data, seed):
                log(trial.title)
                rows, curves = common.run_methods(
                    config, data, trial.methods, trial.noisy.labels, seed,
                    strategy, noisy=trial.noisy if trial.curves else None,
                    columns=trial.columns, log=log,
                )
                runs += rows
                history += curves
    return runs, history
