"""Plots and files of loss landscapes: lines, contours, 3-D surfaces.

The figures are drawn on `matplotlib.figure.Figure` objects with the Agg
renderer, without pyplot: nothing here changes matplotlib's global backend
or needs a display. Each `save_*` writes the raw values twice, as `.npz`
(arrays) and as `.csv` (one row per point), so the plots can be redrawn.
"""

import csv
import os
from typing import Dict

import numpy as np

from keras_sam import _optional
from keras_sam.diagnostics.landscape import Surface

_optional.require(
    "matplotlib", extra="plots", feature="keras_sam.diagnostics.plots"
)

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(figure: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def save_curves(
    path_prefix: str, alphas: np.ndarray, curves: Dict[str, np.ndarray]
) -> list:
    """Writes 1-D landscapes to `<prefix>.npz` and `<prefix>.csv`.

    Args:
        path_prefix: String, the path without extension.
        alphas: 1-D array of coordinates.
        curves: Dict from a name (e.g. "sgd") to the losses at `alphas`.

    Returns:
        The two paths written.

    >>> import tempfile
    >>> prefix = os.path.join(tempfile.mkdtemp(), "line")
    >>> paths = save_curves(prefix, [0, 1], {"a": [1, 2]})
    >>> [os.path.basename(p) for p in paths]
    ['line.npz', 'line.csv']
    """
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    alphas = np.asarray(alphas, np.float64)
    names = list(curves)
    np.savez(path_prefix + ".npz", alphas=alphas,
             **{n: np.asarray(curves[n]) for n in names})
    with open(path_prefix + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["alpha"] + names)
        for i, a in enumerate(alphas):
            writer.writerow([repr(float(a))] +
                            [repr(float(curves[n][i])) for n in names])
    return [path_prefix + ".npz", path_prefix + ".csv"]


def save_surface(path_prefix: str, surface: Surface) -> list:
    """Writes a 2-D landscape to `<prefix>.npz` and `<prefix>.csv`.

    The CSV has one row `alpha, beta, loss` per grid point.

    >>> import tempfile
    >>> prefix = os.path.join(tempfile.mkdtemp(), "grid")
    >>> paths = save_surface(prefix, Surface([0, 1], [0], np.ones((2, 1))))
    >>> [os.path.basename(p) for p in paths]
    ['grid.npz', 'grid.csv']
    """
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    alphas, betas = np.asarray(surface.alphas), np.asarray(surface.betas)
    losses = np.asarray(surface.losses)
    np.savez(path_prefix + ".npz", alphas=alphas, betas=betas, losses=losses)
    with open(path_prefix + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["alpha", "beta", "loss"])
        for i, a in enumerate(alphas):
            for j, b in enumerate(betas):
                writer.writerow(
                    [repr(float(a)), repr(float(b)), repr(float(losses[i, j]))]
                )
    return [path_prefix + ".npz", path_prefix + ".csv"]


def plot_curves(
    path: str,
    alphas: np.ndarray,
    curves: Dict[str, np.ndarray],
    xlabel: str = "alpha",
    title: str = "",
    log_scale: bool = False,
) -> str:
    """Line plot of one or more 1-D landscapes, written as a PNG.

    Args:
        path: String, the PNG file to write.
        alphas: 1-D array of coordinates.
        curves: Dict from a legend label to the losses at `alphas`.
        xlabel: String, the x-axis label. Defaults to "alpha".
        title: String, the title. Defaults to none.
        log_scale: Boolean, a logarithmic loss axis. Defaults to False.

    Returns:
        `path`.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "line.png")
    >>> os.path.exists(plot_curves(path, [0, 1], {"sgd": [1.0, 2.0]}))
    True
    """
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for label, losses in curves.items():
        axes.plot(alphas, losses, marker=".", label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("loss")
    if log_scale:
        axes.set_yscale("log")
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def _display_values(losses, log_scale, value_range, levels) -> tuple:
    """Values, contour levels and label: log10 when the losses span > 100x.

    The levels cover `value_range` (raw losses; default: the losses' own
    range), so that several plots can share one colour scale.
    """
    low, high = value_range or (losses.min(), losses.max())
    if log_scale is None:
        log_scale = low > 0 and high / low > 100
    if log_scale:
        losses, low, high = np.log10(losses), np.log10(low), np.log10(high)
    if high <= low:
        high = low + 1e-12
    label = "log10 loss" if log_scale else "loss"
    return np.clip(losses, low, high), np.linspace(low, high, levels), label


def _grid(surface: Surface, log_scale, value_range, levels) -> tuple:
    """The mesh `(a, b)` and `_display_values` of a surface."""
    a, b = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    values, levels, label = _display_values(
        np.asarray(surface.losses), log_scale, value_range, levels
    )
    return a, b, values, levels, label


def plot_contour(
    path: str,
    surface: Surface,
    title: str = "",
    levels: int = 30,
    log_scale=None,
    value_range=None,
) -> str:
    """Filled contour plot of a 2-D landscape, written as a PNG.

    Args:
        path: String, the PNG file to write.
        surface: A `landscape.Surface`.
        title: String, the title. Defaults to none.
        levels: Integer, the number of contour levels. Defaults to 30.
        log_scale: Boolean, contours of log10(loss); None (default) chooses
            it when the losses are positive and span more than 100x.
        value_range: Optional pair (low, high) of losses covered by the
            colour scale (values outside are clipped), to give several
            plots the same scale. Defaults to the losses' range.

    Returns:
        `path`.

    >>> import tempfile
    >>> grid = Surface([-1, 0, 1], [-1, 0, 1], np.arange(9.0).reshape(3, 3))
    >>> path = os.path.join(tempfile.mkdtemp(), "contour.png")
    >>> os.path.exists(plot_contour(path, grid))
    True

    References:
        Li et al., "Visualizing the Loss Landscape of Neural Nets",
        NeurIPS 2018, section 3 (contour plots).
    """
    a, b, values, levels, label = _grid(
        surface, log_scale, value_range, levels
    )
    figure = Figure(figsize=(5, 4.2))
    axes = figure.add_subplot()
    filled = axes.contourf(a, b, values, levels=levels, cmap="viridis")
    axes.contour(a, b, values, levels=levels, colors="k", linewidths=0.3)
    axes.plot([0], [0], marker="*", color="red", markersize=10)
    figure.colorbar(filled, ax=axes, label=label, ticks=MaxNLocator(8))
    axes.set_xlabel("alpha (direction 1)")
    axes.set_ylabel("beta (direction 2)")
    axes.set_aspect("equal")
    if title:
        axes.set_title(title)
    return _save(figure, path)


def plot_surface(
    path: str,
    surface: Surface,
    title: str = "",
    log_scale=None,
    value_range=None,
) -> str:
    """3-D surface plot of a 2-D landscape, written as a PNG.

    Args and return value: as `plot_contour` (without `levels`).

    >>> import tempfile
    >>> directory = tempfile.mkdtemp()
    >>> os.path.exists(plot_surface(os.path.join(directory, "surface.png"),
    ...                             Surface([0, 1], [0, 1], np.eye(2))))
    True

    References: Li et al. 2018, figure 1 (3-D surface plots).
    """
    a, b, values, levels, label = _grid(surface, log_scale, value_range, 2)
    figure = Figure(figsize=(5.5, 4.5))
    axes = figure.add_subplot(projection="3d")
    axes.plot_surface(
        a, b, values, cmap="viridis", vmin=levels[0], vmax=levels[-1],
        linewidth=0, antialiased=True,
    )
    axes.set_zlim(levels[0], levels[-1])
    axes.set_xlabel("alpha")
    axes.set_ylabel("beta")
    axes.set_zlabel(label)
    if title:
        axes.set_title(title)
    return _save(figure, path)
