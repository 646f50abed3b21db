"""Compares the sharpness of two trained models, e.g. SGD- and SAM-trained.

Loads two `.keras` models of the same architecture (plain Keras models or
`keras_sam.SAMModel`s) and measures, on the same data, for each model: the
loss and accuracy, the top Hessian eigenvalues by Lanczos (lambda_max and
lambda_max / lambda_5, Foret et al. section 4.2), the Hessian trace by
Hutchinson, and the m-sharpness (section 4.1); then draws the loss along the
segment between the two models, a 1-D and a 2-D filter-normalised random
slice around each (Li et al. 2018). The data are the digits training split
by default (`experiments.data.load`), optionally with the same
symmetric label noise the models were trained on.

Usage (from the repository root):

    python tools/compare_sharpness.py --model_a=/tmp/sgd.keras \\
        --model_b=/tmp/sam.keras --output_dir=runs/sharpness

    python tools/compare_sharpness.py --model_a=runs/demo/sgd.keras \\
        --model_b=runs/demo/sam.keras --labels=sgd,sam --noise_rate=0.4 \\
        --m=32 --rho=0.05 --output_dir=runs/sharpness

Writes to `--output_dir`: `comparison.csv` (one row per model),
`interpolation.{png,npz,csv}`, `slice_1d.{png,npz,csv}`, and for each model
`surface_<label>.{npz,csv}`, `contour_<label>.png` and `surface_<label>.png`
(the two 2-D plots share one colour scale); prints the table.
"""

import csv
import os
import sys

from absl import app
from absl import flags

import keras
import numpy as np

import keras_sam  # noqa: F401  (registers SAMModel for load_model)
from keras_sam.diagnostics import stateless_loss
from keras_sam.diagnostics import hessian
from keras_sam.diagnostics import landscape
from keras_sam.diagnostics import plots
from keras_sam import noise
from keras_sam.diagnostics import sharpness

# Run as `python tools/<tool>.py`: `experiments` is in the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import data as data_lib  # noqa: E402

_MODEL_A = flags.DEFINE_string(
    "model_a", None, "First .keras model (e.g. SGD).", required=True
)
_MODEL_B = flags.DEFINE_string(
    "model_b", None, "Second .keras model (e.g. SAM).", required=True
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Directory for the CSV, NPZ and PNG files.",
    required=True,
)
_LABELS = flags.DEFINE_list(
    "labels", None, "Names of the two models; defaults to the file names."
)
_SPLIT = flags.DEFINE_enum(
    "split", "train", ["train", "test"], "Digits split to measure on."
)
_NOISE_RATE = flags.DEFINE_float(
    "noise_rate", 0.0, "Symmetric label noise on the training split, to "
    "measure the loss the models were trained on."
)
_NOISE_SEED = flags.DEFINE_integer("noise_seed", 0, "Seed of the noise.")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", 0, "Use only the first N examples (0: all)."
)
_LOSS = flags.DEFINE_string(
    "loss", None, "Keras loss name to use instead of the compiled loss."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Evaluation batch.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Hessian eigenvalues to compute.")
_LANCZOS_ITERS = flags.DEFINE_integer("lanczos_iters", 40, "Lanczos steps.")
_PROBES = flags.DEFINE_integer("probes", 100, "Hutchinson probes.")
_M = flags.DEFINE_integer("m", 32, "Examples per m-sharpness group.")
_RHO = flags.DEFINE_float("rho", 0.05, "m-sharpness radius.")
_STEPS = flags.DEFINE_integer("ascent_steps", 1, "m-sharpness ascent steps.")
_INTERP_POINTS = flags.DEFINE_integer(
    "interp_points", 31, "Points on the segment, a in [-0.5, 1.5]."
)
_GRID_POINTS = flags.DEFINE_integer(
    "grid_points", 21, "Points per axis of the 2-D slices."
)
_GRID_RANGE = flags.DEFINE_float(
    "grid_range", 1.0, "Slices span [-range, range] along each direction."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of Lanczos, probes, slices.")
_VERBOSE = flags.DEFINE_integer("verbose", 1, "0: quiet, 1: progress bars.")

COLUMNS = [
    "model", "loss", "accuracy", "lambda_max", "lambda_5", "lambda_ratio",
    "trace", "trace_std_error", "m_sharpness", "m_sharpness_std_error",
]


def load_data(model, split, noise_rate, noise_seed, max_examples):
    """Digits arrays shaped for `model`'s input, with optional noise."""
    image = tuple(model.inputs[0].shape[1:]) == (8, 8, 1)
    digits = data_lib.load("digits", image=image)
    if split == "train":
        x, y = digits.x_train, digits.y_train
    else:
        x, y = digits.x_test, digits.y_test
    if noise_rate > 0:
        if split != "train":
            raise ValueError(
                f"--noise_rate={noise_rate} applies to the training split "
                f"only. Received --split={split}: use --split=train."
            )
        y = noise.symmetric_noise(
            y, noise_rate, digits.num_classes, seed=noise_seed
        ).labels
    if max_examples > 0:
        x, y = x[:max_examples], y[:max_examples]
    return x, y


def measure(model, data, loss_fn, verbose) -> dict:
    """The sharpness measures of one model, as one table row."""
    x, y = data
    say = (lambda text: print(text, flush=True)) if verbose else (
        lambda text: None
    )
    batch = _BATCH_SIZE.value
    loss = stateless_loss.evaluate_loss(model, data, loss_fn, batch)
    predictions = model.predict(x, batch_size=batch, verbose=0)
    accuracy = float(np.mean(np.argmax(predictions, axis=-1) == y))
    say(f"  Lanczos, {_LANCZOS_ITERS.value} Hessian-vector products")
    eigen = hessian.top_hessian_eigenvalues(
        model, data, _TOP_K.value, _LANCZOS_ITERS.value, _SEED.value,
        loss_fn, batch, verbose,
    )
    say(f"  Hutchinson, {_PROBES.value} probes")
    trace = hessian.hutchinson_trace(
        model, data, _PROBES.value, _SEED.value, loss_fn, batch, verbose
    )
    say(f"  m-sharpness, m={_M.value}, rho={_RHO.value}")
    sharp = sharpness.m_sharpness(
        model, data, _M.value, _RHO.value, _STEPS.value, loss_fn=loss_fn,
        batch_size=batch, verbose=verbose,
    )
    eigenvalues = eigen.eigenvalues
    return {
        "loss": float(loss),
        "accuracy": accuracy,
        "lambda_max": eigen.lambda_max,
        "lambda_5": float(eigenvalues[4]) if len(eigenvalues) > 4 else np.nan,
        "lambda_ratio": eigen.lambda_ratio,
        "trace": trace.trace,
        "trace_std_error": trace.std_error,
        "m_sharpness": sharp.value,
        "m_sharpness_std_error": sharp.std_error,
    }


def draw_landscapes(models, labels, data, loss_fn, output_dir, verbose):
    """The interpolation and the random slices, as files; their paths."""
    out = lambda name: os.path.join(output_dir, name)  # noqa: E731
    span = np.linspace(-_GRID_RANGE.value, _GRID_RANGE.value,
                       _GRID_POINTS.value)
    return (
        _draw_interpolation(models, labels, data, loss_fn, out, verbose)
        + _draw_slices_1d(models, labels, data, loss_fn, out, span)
        + _draw_slices_2d(models, labels, data, loss_fn, out, span, verbose)
    )


def _draw_interpolation(models, labels, data, loss_fn, out, verbose):
    """The loss on the segment between the two models (and beyond)."""
    curve = landscape.interpolate(
        models[0], models[1], data,
        np.linspace(-0.5, 1.5, _INTERP_POINTS.value), loss_fn,
        _BATCH_SIZE.value, verbose,
    )
    paths = plots.save_curves(
        out("interpolation"), curve.alphas, {"loss": curve.losses}
    )
    paths.append(plots.plot_curves(
        out("interpolation.png"), curve.alphas,
        {f"(1 - a) {labels[0]} + a {labels[1]}": curve.losses},
        xlabel="a", title="Linear interpolation",
        log_scale=bool(
            curve.losses.min() > 0
            and curve.losses.max() > 100 * curve.losses.min()
        ),
    ))
    return paths


def _draw_slices_1d(models, labels, data, loss_fn, out, span):
    """Each model's loss along one filter-normalised random direction."""
    slices = {
        label: landscape.random_slice_1d(
            model, data, np.linspace(span[0], span[-1], 2 * len(span) - 1),
            seed=_SEED.value, loss_fn=loss_fn, batch_size=_BATCH_SIZE.value,
        )
        for model, label in zip(models, labels)
    }
    alphas = slices[labels[0]].alphas
    curves = {label: s.losses for label, s in slices.items()}
    paths = plots.save_curves(out("slice_1d"), alphas, curves)
    paths.append(plots.plot_curves(
        out("slice_1d.png"), alphas, curves,
        title="Filter-normalised random direction",
    ))
    return paths


def _draw_slices_2d(models, labels, data, loss_fn, out, span, verbose):
    """Each model's 2-D slice, contour and surface on one colour scale."""
    surfaces = {}
    for model, label in zip(models, labels):
        if verbose:
            print(f"2-D slice of {label}: {len(span) ** 2} points", flush=True)
        surfaces[label] = landscape.random_slice_2d(
            model, data, span, seed=_SEED.value, loss_fn=loss_fn,
            batch_size=_BATCH_SIZE.value, verbose=verbose,
        )
    value_range = (
        min(s.losses.min() for s in surfaces.values()),
        max(s.losses.max() for s in surfaces.values()),
    )
    paths = []
    for label, surface in surfaces.items():
        paths += plots.save_surface(out(f"surface_{label}"), surface)
        title = f"{label}: filter-normalised 2-D slice"
        paths.append(plots.plot_contour(
            out(f"contour_{label}.png"), surface, title,
            value_range=value_range,
        ))
        paths.append(plots.plot_surface(
            out(f"surface_{label}.png"), surface, title,
            value_range=value_range,
        ))
    return paths


def write_table(rows, path):
    """Writes the rows as CSV and prints them as an aligned table."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    widths = [max(len(c), 12) for c in COLUMNS]
    print(" ".join(c.rjust(w) for c, w in zip(COLUMNS, widths)))
    for row in rows:
        cells = [
            row[c] if isinstance(row[c], str) else f"{row[c]:.5g}"
            for c in COLUMNS
        ]
        print(" ".join(cell.rjust(w) for cell, w in zip(cells, widths)))


def main(argv):
    del argv
    paths = [_MODEL_A.value, _MODEL_B.value]
    labels = _LABELS.value or [
        os.path.splitext(os.path.basename(p))[0] for p in paths
    ]
    if len(labels) != 2 or labels[0] == labels[1]:
        raise app.UsageError(
            f"--labels must name the two models differently. Received: "
            f"{labels}; pass e.g. --labels=sgd,sam."
        )
    models = [keras.models.load_model(p) for p in paths]
    data = load_data(models[0], _SPLIT.value, _NOISE_RATE.value,
                     _NOISE_SEED.value, _MAX_EXAMPLES.value)
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    verbose = _VERBOSE.value
    rows = []
    for model, label in zip(models, labels):
        if verbose:
            print(f"Measuring {label} on {len(data[1])} examples", flush=True)
        rows.append({"model": label,
                     **measure(model, data, _LOSS.value, verbose)})
    files = draw_landscapes(models, labels, data, _LOSS.value,
                            _OUTPUT_DIR.value, verbose)
    table = os.path.join(_OUTPUT_DIR.value, "comparison.csv")
    write_table(rows, table)
    print("Wrote", table, *sorted(f for f in files if f.endswith(".png")),
          sep="\n  ")


if __name__ == "__main__":
    app.run(main)
