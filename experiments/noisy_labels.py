"""SAM vs SGD under label noise: the embedded default job of keras_sam.

Trains the same small MLP, from the same initial weights, on scikit-learn's
digits with symmetric label noise, once with the base optimizer alone (SGD)
and once with SAM, and reports clean test accuracy per epoch: the best
(early-stopping) value and the final one. Foret et al. (2021, section 3.3)
and Baek et al. (2024) report that SAM resists memorising the noisy labels.

Usage (from the repository root):

    python -m experiments.noisy_labels --workdir=runs/demo
    python -m experiments.noisy_labels --workdir=runs/demo --noise_rate=0.2 \
        --rho=0.1 --epochs=60 --seed=1
    python -m experiments.noisy_labels --workdir=runs/demo \
        --rho_schedule=step_decay --bootstrap --noise_curves

Writes `<workdir>/<run name>/history.csv`, `accuracy.png`, `summary.csv`
and the trained models `sgd.keras` and `sam.keras`.

Options beyond the default comparison (the defaults leave it unchanged):
`--rho_schedule` changes SAM's rho every epoch (`keras_sam.schedules`,
Alexandru section 4.3). `--bootstrap` also retrains each method from fresh
weights on the labels its trained model predicts for the training set
("BOOT+SGD", "BOOT+SAM"; Foret et al. section 3.3; models `boot_sgd.keras`,
`boot_sam.keras`). `--noise_curves` measures each epoch the training
accuracy on the clean and on the noisy examples
(`keras_sam.callbacks.NoiseMonitor`, Baek et al. figures 1-2) into
`noise_history.csv` and `noise_curves.png`.
"""

import dataclasses
import os
import time

from absl import app
from absl import flags

import keras
import numpy as np

import keras_sam
from experiments import common
from experiments import data as data_lib
from experiments import models
from experiments import results
from keras_sam import noise
from keras_sam import schedules
from keras_sam.noise import reinitialize
from keras_sam.noise import relabel
from keras_sam.callbacks import NoiseMonitor
from keras_sam.callbacks import RhoScheduler


@dataclasses.dataclass
class Config:
    """Hyperparameters of the noisy-label comparison."""

    noise_rate: float = 0.4
    rho: float = 0.2
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.9
    hidden_units: int = 128
    seed: int = 0
    rho_schedule: str = "constant"
    rho_k: float = 0.1
    bootstrap: bool = False
    noise_curves: bool = False

    def run_name(self) -> str:
        """A directory name that encodes the hyperparameters."""
        name = (
            f"noise{self.noise_rate:g}_rho{self.rho:g}_lr{self.learning_rate:g}"
            f"_bs{self.batch_size}_ep{self.epochs}_seed{self.seed}"
        )
        if self.rho_schedule == "exp_decay":
            name += f"_exp_decay{self.rho_k:g}"
        elif self.rho_schedule != "constant":
            name += f"_{self.rho_schedule}"
        if self.bootstrap:
            name += "_bootstrap"
        return name

    def rho_scheduler(self):
        """The `RhoScheduler` of the SAM runs, or None for a constant rho."""
        if self.rho_schedule == "constant":
            return None
        kwargs = {"k": self.rho_k} if self.rho_schedule == "exp_decay" else {}
        schedule = schedules.by_name(self.rho_schedule, self.rho, **kwargs)
        return RhoScheduler(schedule, per="epoch")


_LABELS = {
    "sgd": "SGD",
    "sam": "SAM",
    "boot_sgd": "BOOT+SGD",
    "boot_sam": "BOOT+SAM",
}


def _label(name: str, config: Config) -> str:
    """How a method is named in the plots."""
    if not name.endswith("sam"):
        return _LABELS[name]
    schedule = (
        "" if config.rho_schedule == "constant" else f", {config.rho_schedule}"
    )
    return "%s (rho=%g%s)" % (_LABELS[name], config.rho, schedule)


def _compile(model, config: Config):
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=config.learning_rate, momentum=config.momentum
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Trains SGD and SAM on noisy digits; writes CSV, PNG and models.

    Args:
        config: A `Config`.
        workdir: Directory under which a run directory named by the
            hyperparameters is created.

    Returns:
        A dict mapping "sgd" and "sam" (and "boot_sgd", "boot_sam" with
        `config.bootstrap`) to their summary rows (best and final clean
        test accuracy, best epoch, seconds per epoch).
    """
    run_dir = os.path.join(workdir, config.run_name())
    os.makedirs(run_dir, exist_ok=True)
    data = data_lib.load("digits", seed=config.seed)
    noisy = noise.symmetric_noise(
        data.y_train, config.noise_rate, data.num_classes, seed=config.seed
    )
    initial = _initial_models(config, data)
    trained, histories, summary = {}, {}, {}
    for name in _methods(config):
        model, labels = _model_and_labels(name, config, initial, trained,
                                          data, noisy)
        history, seconds = _fit(name, model, labels, config, data, noisy)
        model.save(os.path.join(run_dir, f"{name}.keras"))
        trained[name], histories[name] = model, history
        summary[name] = {
            "method": _LABELS[name],
            **_summarize(history),
            "seconds_per_epoch": seconds / config.epochs,
        }
    _write_results(run_dir, histories, summary, config)
    _print_table(summary, config, run_dir)
    return summary


def _methods(config: Config) -> list:
    """The methods in training order: bootstrapped ones after their source."""
    names = ["sgd", "sam"]
    return names + ([f"boot_{n}" for n in names] if config.bootstrap else [])


def _initial_models(config: Config, data) -> dict:
    """The SGD model and the SAM model, from the same initial weights."""
    keras.utils.set_random_seed(config.seed)
    sgd = models.mlp(
        data.input_shape, data.num_classes, hidden_units=config.hidden_units
    )
    sam_base = keras.models.clone_model(sgd)
    sam_base.set_weights(sgd.get_weights())  # both start from the same point
    sam = keras_sam.SAMModel.from_model(sam_base, rho=config.rho)
    return {"sgd": sgd, "sam": sam}


def _model_and_labels(name, config, initial, trained, data, noisy) -> tuple:
    """The compiled model `name` trains, and the labels it trains on.

    SGD and SAM train their initial models on the noisy labels; the
    bootstrapped methods train fresh weights on the labels that the
    trained SGD or SAM model predicts for the training set.
    """
    if name in initial:
        return _compile(initial[name], config), noisy.labels
    source = trained[name[len("boot_"):]]
    labels = relabel(source, data.x_train, noisy.labels)
    return reinitialize(source), labels


def _fit(name, model, labels, config: Config, data, noisy) -> tuple:
    """Trains `model` on `labels`; returns (history dict, seconds)."""
    callbacks = []
    scheduler = config.rho_scheduler()
    if name.endswith("sam") and scheduler is not None:
        callbacks.append(scheduler)
    if config.noise_curves:
        callbacks.append(NoiseMonitor(
            data.x_train, noisy, test_data=(data.x_test, data.y_test)
        ))
    keras.utils.set_random_seed(config.seed)  # same shuffling for all
    start = time.perf_counter()
    history = model.fit(
        data.x_train,
        labels,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(data.x_test, data.y_test),
        verbose=0,
        callbacks=callbacks,
    )
    return history.history, time.perf_counter() - start


def _summarize(history: dict) -> dict:
    """Best and final clean test accuracy, final (noisy) train accuracy."""
    row = common.summarize(history)
    return {
        "best_test_acc": row["best_test_acc"],
        "best_epoch": row["best_epoch"],
        "final_test_acc": row["final_test_acc"],
        "final_train_acc_noisy_labels": row["final_train_acc"],
    }


def _write_results(run_dir, histories, summary, config: Config) -> None:
    """history.csv, summary.csv, accuracy.png and the noise curves' files."""
    path = lambda name: os.path.join(run_dir, name)  # noqa: E731
    results.write_csv(path("history.csv"), [
        {"method": name, "epoch": epoch, "train_acc_noisy_labels": acc,
         "test_acc": val_acc, "loss": loss}
        for name, h in histories.items()
        for epoch, (acc, val_acc, loss) in enumerate(
            zip(h["accuracy"], h["val_accuracy"], h["loss"]), start=1
        )
    ])
    results.write_csv(path("summary.csv"), summary.values())
    _plot(path("accuracy.png"), histories, config)
    if config.noise_curves:
        results.write_csv(path("noise_history.csv"), [
            {"method": name, "epoch": epoch, **dict(zip(_NOISE_KEYS, values))}
            for name, h in histories.items()
            for epoch, values in enumerate(
                zip(*(h[key] for key in _NOISE_KEYS)), start=1
            )
        ])
        _plot_noise_curves(path("noise_curves.png"), histories, config)


def _plot(path: str, histories: dict, config: Config) -> None:
    fig, ax = results.pyplot().subplots(figsize=(6, 4))
    for name, history in histories.items():
        epochs = np.arange(1, len(history["val_accuracy"]) + 1)
        label = _label(name, config)
        ax.plot(epochs, history["val_accuracy"], label=f"{label}: clean test")
        ax.plot(
            epochs,
            history["accuracy"],
            linestyle="--",
            label=f"{label}: train (noisy labels)",
        )
    ax.set_xlabel("epoch")
    ax.set_title(
        f"digits, {config.noise_rate:.0%} symmetric label noise"
    )
    ax.grid(alpha=0.3)
    results.save_figure(fig, path, ylabel="accuracy", legend=True)


_NOISE_KEYS = (
    "train_clean_accuracy",
    "train_noisy_accuracy",
    "train_noisy_true_accuracy",
    "test_accuracy",
    "best_test_accuracy",
)
_NOISE_PANELS = (
    ("clean test accuracy", [("test_accuracy", "-")]),
    ("training accuracy, clean examples", [("train_clean_accuracy", "-")]),
    (
        "training accuracy, noisy examples",
        [("train_noisy_accuracy", "-"), ("train_noisy_true_accuracy", ":")],
    ),
)
_NOISE_SUFFIXES = {
    "train_noisy_accuracy": " vs noisy labels (memorised)",
    "train_noisy_true_accuracy": " vs true labels",
}


def _plot_noise_curves(path: str, histories: dict, config: Config) -> None:
    """Baek et al. figs 1-2: test, clean-train and noisy-train accuracy."""
    fig, axes = results.pyplot().subplots(1, 3, figsize=(18, 4.2))
    for ax, (title, curves) in zip(axes, _NOISE_PANELS):
        for i, (name, history) in enumerate(histories.items()):
            epochs = np.arange(1, len(history["test_accuracy"]) + 1)
            for key, style in curves:
                ax.plot(
                    epochs,
                    history[key],
                    linestyle=style,
                    color=f"C{i}",
                    label=_label(name, config) + _NOISE_SUFFIXES.get(key, ""),
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    results.save_figure(
        fig, path, ylabel="accuracy",
        title=f"digits, {config.noise_rate:.0%} symmetric label noise "
        f"({config.epochs} epochs, seed {config.seed})",
    )


def _print_table(summary: dict, config: Config, run_dir: str) -> None:
    print(
        f"\ndigits, {config.noise_rate:.0%} symmetric label noise, "
        f"{config.epochs} epochs, seed {config.seed}"
    )
    width = max(8, *(len(row["method"]) + 1 for row in summary.values()))
    header = (
        f"{'method':<{width}}{'best test acc':>15}{'(epoch)':>9}"
        f"{'final test acc':>16}{'train acc (noisy)':>19}{'s/epoch':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in summary.values():
        print(
            f"{row['method']:<{width}}{row['best_test_acc']:>15.4f}"
            f"{row['best_epoch']:>9d}{row['final_test_acc']:>16.4f}"
            f"{row['final_train_acc_noisy_labels']:>19.4f}"
            f"{row['seconds_per_epoch']:>9.3f}"
        )
    if any(name.startswith("boot") for name in summary):
        print(
            "BOOT+ rows: train acc is on the labels they trained on, the "
            "predictions of SGD or SAM."
        )
    print(f"\nresults in {run_dir}/ (history.csv, summary.csv, accuracy.png)")


_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output directory.")
_NOISE_RATE = flags.DEFINE_float("noise_rate", 0.4, "Symmetric noise rate.")
_RHO = flags.DEFINE_float("rho", Config.rho, "SAM neighbourhood size.")
_EPOCHS = flags.DEFINE_integer("epochs", Config.epochs, "Training epochs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", Config.batch_size, "Batch.")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", Config.learning_rate, "SGD learning rate."
)
_SEED = flags.DEFINE_integer("seed", Config.seed, "Seed of data and init.")
_RHO_SCHEDULE = flags.DEFINE_enum(
    "rho_schedule",
    Config.rho_schedule,
    ["constant", "step_decay", "exp_decay", "step_increase", "cosine"],
    "How SAM's rho changes over the epochs, starting from --rho.",
)
_RHO_K = flags.DEFINE_float(
    "rho_k", Config.rho_k, "Decay rate per epoch of --rho_schedule=exp_decay."
)
_BOOTSTRAP = flags.DEFINE_boolean(
    "bootstrap",
    Config.bootstrap,
    "Also retrain SGD and SAM from scratch on their predicted labels.",
)
_NOISE_CURVES = flags.DEFINE_boolean(
    "noise_curves",
    Config.noise_curves,
    "Record clean/noisy training accuracy per epoch (noise_curves.png).",
)


def main(argv):
    del argv
    config = Config(
        noise_rate=_NOISE_RATE.value,
        rho=_RHO.value,
        epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value,
        learning_rate=_LEARNING_RATE.value,
        seed=_SEED.value,
        rho_schedule=_RHO_SCHEDULE.value,
        rho_k=_RHO_K.value,
        bootstrap=_BOOTSTRAP.value,
        noise_curves=_NOISE_CURVES.value,
    )
    train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
