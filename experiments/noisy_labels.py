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

import csv
import dataclasses
import os
import time

from absl import app
from absl import flags

import keras
import numpy as np

import keras_sam
from keras_sam import datasets
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


def build_mlp(input_dim: int, num_classes: int, hidden_units: int):
    """A two-hidden-layer ReLU MLP returning logits."""
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="mlp",
    )


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
        A dict mapping "sgd" and "sam" to their summary rows (best and final
        clean test accuracy, best epoch, seconds per epoch).
    """
    run_dir = os.path.join(workdir, config.run_name())
    os.makedirs(run_dir, exist_ok=True)
    data = datasets.load_digits(seed=config.seed)
    noisy = noise.symmetric_noise(
        data.train.y, config.noise_rate, data.num_classes, seed=config.seed
    )

    keras.utils.set_random_seed(config.seed)
    sgd = build_mlp(data.train.x.shape[1], data.num_classes, config.hidden_units)
    initial_weights = sgd.get_weights()
    sam_base = keras.models.clone_model(sgd)
    sam_base.set_weights(initial_weights)  # both start from the same point
    sam = keras_sam.SAMModel.from_model(sam_base, rho=config.rho)

    histories, summary = {}, {}
    runs = [("sgd", sgd), ("sam", sam)]
    if config.bootstrap:
        runs += [("boot_sgd", None), ("boot_sam", None)]
    for name, model in runs:
        labels = noisy.labels
        if model is None:
            # Bootstrapping: fresh weights, trained on the predicted labels
            # of the method trained above.
            trained = {"boot_sgd": sgd, "boot_sam": sam}[name]
            labels = relabel(trained, data.train.x, noisy.labels)
            model = reinitialize(trained)
        else:
            _compile(model, config)
        callbacks = []
        scheduler = config.rho_scheduler()
        if name.endswith("sam") and scheduler is not None:
            callbacks.append(scheduler)
        if config.noise_curves:
            callbacks.append(
                NoiseMonitor(
                    data.train.x, noisy, test_data=(data.test.x, data.test.y)
                )
            )
        keras.utils.set_random_seed(config.seed)  # same shuffling for both
        start = time.perf_counter()
        history = model.fit(
            data.train.x,
            labels,
            batch_size=config.batch_size,
            epochs=config.epochs,
            validation_data=(data.test.x, data.test.y),
            verbose=0,
            callbacks=callbacks,
        )
        seconds = time.perf_counter() - start
        model.save(os.path.join(run_dir, f"{name}.keras"))
        test_acc = np.asarray(history.history["val_accuracy"])
        histories[name] = history.history
        summary[name] = {
            "method": _LABELS[name],
            "best_test_acc": float(test_acc.max()),
            "best_epoch": int(test_acc.argmax()) + 1,
            "final_test_acc": float(test_acc[-1]),
            "final_train_acc_noisy_labels": float(
                history.history["accuracy"][-1]
            ),
            "seconds_per_epoch": seconds / config.epochs,
        }

    _write_history(os.path.join(run_dir, "history.csv"), histories)
    _write_summary(os.path.join(run_dir, "summary.csv"), summary)
    _plot(os.path.join(run_dir, "accuracy.png"), histories, config)
    if config.noise_curves:
        _write_noise_history(
            os.path.join(run_dir, "noise_history.csv"), histories
        )
        _plot_noise_curves(
            os.path.join(run_dir, "noise_curves.png"), histories, config
        )
    _print_table(summary, config, run_dir)
    return summary


def _write_history(path: str, histories: dict) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["method", "epoch", "train_acc_noisy_labels", "test_acc", "loss"]
        )
        for name, history in histories.items():
            for epoch, (acc, val_acc, loss) in enumerate(
                zip(history["accuracy"], history["val_accuracy"], history["loss"]),
                start=1,
            ):
                writer.writerow([name, epoch, acc, val_acc, loss])


def _write_summary(path: str, summary: dict) -> None:
    rows = list(summary.values())
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _plot(path: str, histories: dict, config: Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
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
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"digits, {config.noise_rate:.0%} symmetric label noise"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_NOISE_KEYS = (
    "train_clean_accuracy",
    "train_noisy_accuracy",
    "train_noisy_true_accuracy",
    "test_accuracy",
    "best_test_accuracy",
)


def _write_noise_history(path: str, histories: dict) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "epoch", *_NOISE_KEYS])
        for name, history in histories.items():
            columns = [history[key] for key in _NOISE_KEYS]
            for epoch, values in enumerate(zip(*columns), start=1):
                writer.writerow([name, epoch, *values])


def _plot_noise_curves(path: str, histories: dict, config: Config) -> None:
    """Baek et al. figs 1-2: test, clean-train and noisy-train accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = (
        ("clean test accuracy", [("test_accuracy", "-")]),
        ("training accuracy, clean examples", [("train_clean_accuracy", "-")]),
        (
            "training accuracy, noisy examples",
            [
                ("train_noisy_accuracy", "-"),
                ("train_noisy_true_accuracy", ":"),
            ],
        ),
    )
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.2))
    for ax, (title, curves) in zip(axes, panels):
        for i, (name, history) in enumerate(histories.items()):
            epochs = np.arange(1, len(history["test_accuracy"]) + 1)
            for key, style in curves:
                suffix = ""
                if key == "train_noisy_accuracy":
                    suffix = " vs noisy labels (memorised)"
                elif key == "train_noisy_true_accuracy":
                    suffix = " vs true labels"
                ax.plot(
                    epochs,
                    history[key],
                    linestyle=style,
                    color=f"C{i}",
                    label=_label(name, config) + suffix,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    axes[0].set_ylabel("accuracy")
    fig.suptitle(
        f"digits, {config.noise_rate:.0%} symmetric label noise "
        f"({config.epochs} epochs, seed {config.seed})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
