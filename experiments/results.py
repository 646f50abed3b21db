"""Results of the studies: t-intervals over seeds, CSV files, tables, plots.

    rows = [{"method": "SAM", "noise": 0.4, "seed": 0, "final": 0.9}, ...]
    table = aggregate(rows, by=("method", "noise"), metrics=("final",))
    write_csv(path, table)
    print(format_table(table, ...))
"""

import csv
import math
import os
from typing import Iterable, Optional, Sequence

import numpy as np


def t_interval(values, confidence: float = 0.95) -> tuple:
    """Mean and half-width of the Student-t confidence interval.

    The half-width is t_{(1 + confidence) / 2, n - 1} * s / sqrt(n), with
    s the sample standard deviation; NaN for fewer than two values.

    >>> mean, half = t_interval([1.0, 2.0, 3.0])
    >>> round(mean, 3), round(half, 3)
    (2.0, 2.484)
    """
    from scipy import stats

    values = np.asarray([v for v in values if not math.isnan(v)], float)
    if len(values) == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan
    sem = values.std(ddof=1) / math.sqrt(len(values))
    return mean, float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * sem)


def aggregate(rows: Sequence[dict], by: Sequence[str],
              metrics: Sequence[str]) -> list:
    """Mean and 95% t-interval of `metrics` over the rows of each group.

    Rows whose `status` is not "ok" are left out of the statistics; a group
    with no "ok" row keeps its first row's status (e.g. a skip reason).

    Returns:
        One dict per group, in order of first appearance, with the `by`
        columns, `n`, and `<metric>_mean` / `<metric>_ci95` per metric.
    """
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    table = []
    for key, members in groups.items():
        ok = [r for r in members if r.get("status", "ok") == "ok"]
        entry = dict(zip(by, key))
        entry["n"] = len(ok)
        entry["status"] = "ok" if ok else members[0].get("status", "")
        for metric in metrics:
            mean, half = t_interval([float(r[metric]) for r in ok])
            entry[f"{metric}_mean"] = mean
            entry[f"{metric}_ci95"] = half
        table.append(entry)
    return table


def write_csv(path: str, rows: Iterable[dict]) -> None:
    """Writes dict rows to CSV, with the union of their keys as header."""
    rows = list(rows)
    fields = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cell(entry: dict, metric: str, scale: float = 100.0,
         digits: int = 1) -> str:
    """"mean ± ci" of an aggregated entry, in percent by default."""
    if entry.get("status", "ok") != "ok":
        return "skipped"
    mean, half = entry[f"{metric}_mean"], entry[f"{metric}_ci95"]
    if math.isnan(mean):
        return "-"
    if math.isnan(half):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * half:.{digits}f}"


def format_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A plain-text table (also valid Markdown) of string cells."""
    widths = [
        max(len(str(h)), *(len(str(line[i])) for line in lines))
        for i, h in enumerate(header)
    ]

    def fmt(cells):
        return "| " + " | ".join(
            str(c).ljust(w) for c, w in zip(cells, widths)
        ) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def skip_notes(table: Sequence[dict]) -> list:
    """The distinct skip reasons of a table, for printing under it."""
    notes = []
    for entry in table:
        status = entry.get("status", "ok")
        if status != "ok" and status not in notes:
            notes.append(status)
    return notes


def join_report(lines: Sequence[str], table: Sequence[dict],
                seconds: float, run_dir: str) -> str:
    """A study's report: `lines`, the table's skip notes, time and place."""
    notes = [f"note: {n}" for n in skip_notes(table)]
    footer = f"\n{seconds:.0f} s; results in {run_dir}/"
    return "\n".join([*lines, *notes, footer])


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(fig, path: str, title: Optional[str] = None,
                ylabel: Optional[str] = None, legend: bool = False) -> None:
    """Finishes `fig`, writes it to `path` (120 dpi) and closes it.

    Args:
        fig: A matplotlib figure.
        path: Where to write it; the extension names the format.
        title: Optional title of the whole figure.
        ylabel: Optional label of the first panel's vertical axis.
        legend: Boolean, draw the first panel's legend.
    """
    first = fig.axes[0]
    if ylabel is not None:
        first.set_ylabel(ylabel)
    if legend:
        first.legend(fontsize=8)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def plot_lines(ax, table, x: str, series: str, metric: str,
               scale: float = 100.0, error: bool = False):
    """One line per value of `series`: `metric` mean against `x`, with CIs.

    Args:
        ax: A matplotlib axis.
        table: Rows of `aggregate` with columns `x`, `series` and the
            metric's `_mean`/`_ci95`.
        x: Column on the horizontal axis.
        series: Column whose values are the lines.
        metric: Metric name; `error=True` plots 1 - metric.
        scale: Multiplier of the values (100: percent).
        error: Boolean, plot the error rate instead of the metric.
    """
    names = []
    for entry in table:
        if entry[series] not in names:
            names.append(entry[series])
    for name in names:
        points = [
            e for e in table if e[series] == name and e["status"] == "ok"
        ]
        if not points:
            continue
        xs = [float(e[x]) for e in points]
        means = np.array([e[f"{metric}_mean"] for e in points])
        halves = np.nan_to_num([e[f"{metric}_ci95"] for e in points])
        ys = scale * (1 - means if error else means)
        ax.errorbar(xs, ys, yerr=scale * halves, marker="o", capsize=3,
                    label=str(name))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
