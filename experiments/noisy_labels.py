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

Writes `<workdir>/<run name>/history.csv`, `accuracy.png`, `summary.csv`
and the trained models `sgd.keras` and `sam.keras`.
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

    def run_name(self) -> str:
        """A directory name that encodes the hyperparameters."""
        return (
            f"noise{self.noise_rate:g}_rho{self.rho:g}_lr{self.learning_rate:g}"
            f"_bs{self.batch_size}_ep{self.epochs}_seed{self.seed}"
        )


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
    for name, model in (("sgd", sgd), ("sam", sam)):
        _compile(model, config)
        keras.utils.set_random_seed(config.seed)  # same shuffling for both
        start = time.perf_counter()
        history = model.fit(
            data.train.x,
            noisy.labels,
            batch_size=config.batch_size,
            epochs=config.epochs,
            validation_data=(data.test.x, data.test.y),
            verbose=0,
        )
        seconds = time.perf_counter() - start
        model.save(os.path.join(run_dir, f"{name}.keras"))
        test_acc = np.asarray(history.history["val_accuracy"])
        histories[name] = history.history
        summary[name] = {
            "method": name.upper(),
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
        label = "SAM (rho=%g)" % config.rho if name == "sam" else "SGD"
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


def _print_table(summary: dict, config: Config, run_dir: str) -> None:
    print(
        f"\ndigits, {config.noise_rate:.0%} symmetric label noise, "
        f"{config.epochs} epochs, seed {config.seed}"
    )
    header = (
        f"{'method':<8}{'best test acc':>15}{'(epoch)':>9}"
        f"{'final test acc':>16}{'train acc (noisy)':>19}{'s/epoch':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in summary.values():
        print(
            f"{row['method']:<8}{row['best_test_acc']:>15.4f}"
            f"{row['best_epoch']:>9d}{row['final_test_acc']:>16.4f}"
            f"{row['final_train_acc_noisy_labels']:>19.4f}"
            f"{row['seconds_per_epoch']:>9.3f}"
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


def main(argv):
    del argv
    config = Config(
        noise_rate=_NOISE_RATE.value,
        rho=_RHO.value,
        epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value,
        learning_rate=_LEARNING_RATE.value,
        seed=_SEED.value,
    )
    train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
