"""Searches SAM's rho on a clean validation split: grid or Bayesian.

Holds out 10% of the training set with its clean labels, adds symmetric
label noise to the rest, and runs a KerasTuner search over rho scored by the
best epoch's validation accuracy (Foret et al. section 3.1, appendix C.1).
Run the same command again to resume an interrupted search.

Usage (from the repository root):

    python tools/search_rho.py --search=grid --noise_rate=0.4 \\
        --output_dir=runs/search_rho

    python tools/search_rho.py --search=bayesian --trials=10 \\
        --noise_rate=0.4 --output_dir=runs/search_rho

    python tools/search_rho.py --search=grid --dataset=cifar10 --model=cnn \\
        --epochs=20 --batch_size=128 --output_dir=runs/search_rho

`--dataset` is "digits" (embedded, offline) or a TensorFlow Datasets name
that `experiments.data.load` knows (cifar10, cifar100, svhn_cropped,
fashion_mnist; `tfds.load` must be able to find or download it). The model
is `experiments.models`' MLP (`--model=mlp`) or small CNN (`--model=cnn`),
`--hidden_units` wide; images are normalised by the model's first layer.
Writes
`<output_dir>/<run name>/trials.csv` and `val_accuracy_vs_rho.png`, next to
KerasTuner's files, and prints the trials and the winner.
"""

import functools
import os
import sys
import warnings

from absl import app
from absl import flags

import keras

from keras_sam import noise
from keras_sam import tuning

# Run as `python tools/<tool>.py`: `experiments` is in the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import data as data_lib  # noqa: E402
from experiments import models  # noqa: E402
from experiments import results  # noqa: E402

def define_flags(flag_values=flags.FLAGS):
    """Defines this tool's flags (only when run, so imports never clash)."""
    kw = {"flag_values": flag_values}
    flags.DEFINE_enum("search", None, ["grid", "bayesian"],
                      "Grid or Bayesian search of rho.", **kw)
    flags.DEFINE_string("output_dir", None,
                        "Directory of the search and its results.", **kw)
    flags.DEFINE_string("dataset", "digits",
                        '"digits" or a tfds name such as "cifar10".', **kw)
    flags.DEFINE_string("data_dir", None, "tfds data directory.", **kw)
    flags.DEFINE_float("noise_rate", 0.0,
                       "Symmetric label noise on the training part.", **kw)
    flags.DEFINE_float("validation_fraction", 0.1,
                       "Share of the training set held out, clean.", **kw)
    flags.DEFINE_integer("trials", None, "Number of trials (default: the "
                         "whole grid; 10 for Bayesian search).", **kw)
    flags.DEFINE_list("rho_values", [str(r) for r in tuning.PAPER_GRID],
                      "Grid of rho.", **kw)
    flags.DEFINE_float("rho_min", tuning.BAYESIAN_RHO_RANGE[0],
                       "Lower bound of Bayesian rho.", **kw)
    flags.DEFINE_float("rho_max", tuning.BAYESIAN_RHO_RANGE[1],
                       "Upper bound of Bayesian rho.", **kw)
    flags.DEFINE_integer("epochs", 40, "Epochs per trial.", **kw)
    flags.DEFINE_integer("batch_size", 32, "Batch size.", **kw)
    flags.DEFINE_float("learning_rate", 0.05, "SGD learning rate.", **kw)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.", **kw)
    flags.DEFINE_enum("model", "mlp", ["mlp", "cnn"], "Architecture.", **kw)
    flags.DEFINE_integer("hidden_units", 128, "Model width.", **kw)
    flags.DEFINE_integer("seed", 0, "Seed of split, noise, weights.", **kw)
    flags.DEFINE_bool("overwrite", False, "Discard a previous search "
                      "instead of resuming it.", **kw)
    flags.DEFINE_integer("verbose", 0, "KerasTuner verbosity.", **kw)
    flags.mark_flags_as_required(["search", "output_dir"], **kw)


def config_from_flags(flag_values=flags.FLAGS) -> dict:
    """The parsed flags as the `config` of `search_and_report`."""
    config = {name: flag_values[name].value for name in _CONFIG_KEYS}
    config["rho_values"] = [float(r) for r in config["rho_values"]]
    return config


_CONFIG_KEYS = (
    "search", "output_dir", "dataset", "data_dir", "noise_rate",
    "validation_fraction", "trials", "rho_values", "rho_min", "rho_max",
    "epochs", "batch_size", "learning_rate", "momentum", "model",
    "hidden_units", "seed", "overwrite", "verbose",
)


def build_model(config: dict, data: data_lib.Data) -> keras.Model:
    """The searched model: `experiments.models`' MLP or small CNN.

    "mlp" has two hidden layers of `hidden_units`; "cnn" is `small_cnn`
    with `hidden_units / 4` and `/ 2` filters, without normalisation
    layers. Both normalise raw tfds images by the per-channel statistics
    of the training set (digits are already in [0, 1]).
    """
    if config["model"] == "cnn":
        name = "small_cnn"
        kwargs = {"filters": max(config["hidden_units"] // 4, 1), "norm": None}
    else:
        name, kwargs = "mlp", {"hidden_units": config["hidden_units"]}
    return models.build(
        name, data.input_shape, data.num_classes, data.mean, data.std,
        **kwargs,
    )


def run_name(config: dict) -> str:
    """A directory name that encodes the search's hyperparameters."""
    space = (
        "rho" + "-".join(f"{float(r):g}" for r in config["rho_values"])
        if config["search"] == "grid"
        else f"rho{config['rho_min']:g}-{config['rho_max']:g}"
    )
    return (
        f"{config['search']}_{config['dataset']}_noise{config['noise_rate']:g}"
        f"_{space}_{config['model']}{config['hidden_units']}"
        f"_lr{config['learning_rate']:g}_bs{config['batch_size']}"
        f"_ep{config['epochs']}_seed{config['seed']}"
    )


def plot(rows, best, title, path):
    """Validation accuracy against rho on a log axis, winner marked."""
    from matplotlib import ticker

    done = sorted(
        (r["rho"], r["score"]) for r in rows if r["score"] is not None
    )
    fig, ax = results.pyplot().subplots(figsize=(6, 4))
    ax.plot(*zip(*done), "o-" if len(done) > 1 else "o", label="trials")
    ax.plot([best.best_rho], [best.best_score], "r*", markersize=14,
            label=f"best rho = {best.best_rho:.3g}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    rhos = sorted({rho for rho, _ in done})
    if len(rhos) <= 8:  # a grid: label its values
        ax.set_xticks(rhos)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    else:  # label 1, 2 and 5 times powers of ten
        ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("rho")
    ax.set_ylabel("best validation accuracy (clean labels)")
    ax.set_title(title, fontsize=7)
    ax.legend()
    results.save_figure(fig, path)


def format_table(rows) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    columns = list(rows[0])
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells))
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def run_search(config: dict, data: data_lib.Data) -> tuning.SearchResult:
    """The grid or Bayesian search of rho that `config` describes."""
    label_noise = None
    if config["noise_rate"] > 0:
        label_noise = functools.partial(
            noise.symmetric_noise,
            rate=config["noise_rate"],
            num_classes=data.num_classes,
            seed=config["seed"],
        )
    hypermodel = tuning.SAMHyperModel(
        functools.partial(build_model, config, data),
        optimizer=keras.optimizers.SGD(
            config["learning_rate"], momentum=config["momentum"]
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        seed=config["seed"],
    )
    common = dict(
        directory=config["output_dir"],
        project_name=run_name(config),
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        validation_fraction=config["validation_fraction"],
        label_noise=label_noise,
        seed=config["seed"],
        overwrite=config["overwrite"],
        verbose=config["verbose"],
    )
    x, y = data.x_train, data.y_train
    if config["search"] == "grid":
        return tuning.grid_search(
            hypermodel, x, y, rho_values=config["rho_values"],
            max_trials=config["trials"], **common
        )
    return tuning.bayesian_search(
        hypermodel, x, y, rho_range=(config["rho_min"], config["rho_max"]),
        max_trials=config["trials"] or 10, **common
    )


def add_test_accuracy(result: tuning.SearchResult, x_test, y_test):
    """Adds the clean test accuracy of each trial's best epoch to its row."""
    for row in result.trials:
        row["test_accuracy"] = None
        if row["status"] == "COMPLETED":
            trial = result.tuner.oracle.get_trial(row["trial_id"])
            with warnings.catch_warnings():  # optimizer state is not needed
                warnings.simplefilter("ignore", UserWarning)
                model = result.tuner.load_model(trial)
            row["test_accuracy"] = float(
                model.evaluate(x_test, y_test, verbose=0,
                               return_dict=True)["accuracy"]
            )


def search_and_report(config: dict) -> tuning.SearchResult:
    """Runs the search described by `config` and writes its results."""
    keras.utils.set_random_seed(config["seed"])
    data = data_lib.load(
        config["dataset"], image=config["model"] == "cnn",
        seed=config["seed"], data_dir=config["data_dir"],
    )
    result = run_search(config, data)
    add_test_accuracy(result, data.x_test, data.y_test)  # for context
    out_dir = result.tuner.project_dir
    results.write_csv(os.path.join(out_dir, "trials.csv"), result.trials)
    plot(result.trials, result, run_name(config), os.path.join(
        out_dir, "val_accuracy_vs_rho.png"))
    print(format_table(result.trials))
    print(
        f"best rho = {result.best_rho:.4g} (validation accuracy "
        f"{result.best_score:.4f}, hyperparameters "
        f"{result.best_hyperparameters}); results in {out_dir}"
    )
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    search_and_report(config_from_flags())


if __name__ == "__main__":
    define_flags()
    app.run(main)
