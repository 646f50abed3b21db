"""Step time of SAM and its variants relative to plain SGD, side by side.

Builds one model per method, warms each up (tracing and compilation), then
measures rounds of `--steps` training steps, interleaving the methods within
every round so that machine noise hits all of them alike. Prints the median
seconds per step and the ratio to SGD measured in the same run, plus peak
accelerator memory where the device reports it, and writes a CSV.

Usage (from the repository root):

    python tools/benchmark.py --model=mlp --batch_size=128 --jit
    python tools/benchmark.py --model=cnn --batch_size=128 --jit \
        --methods=sgd,sam,sam_m4,sam_1
    python tools/benchmark.py --model=resnet --batch_size=256 \
        --mixed_precision --jit --output_csv=/tmp/bench.csv
    python tools/benchmark.py --smoke   # a few steps, for CI

Methods: sgd (base optimizer), sam, sam_m4 (m = per-replica batch / 4),
sam_1 (per-example 1-SAM), and the variants listed in `METHODS`.
"""

import csv
import statistics
import sys
import time

from absl import app
from absl import flags

import keras
import numpy as np
import tensorflow as tf

import keras_sam

# SAMModel keyword arguments of every method; None is the plain Keras model.
# "m" may be a callable of the per-replica batch size.
METHODS = {
    "sgd": None,
    "sam": {},
    "sam_m4": {"m": lambda batch: max(batch // 4, 1)},
    "sam_1": {"m": 1},
    "sam_pinf": {"p": float("inf")},
}

_MODEL = flags.DEFINE_enum("model", "mlp", ["mlp", "cnn", "resnet"], "Model.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_METHODS = flags.DEFINE_list(
    "methods", "sgd,sam,sam_m4,sam_1", f"Any of {sorted(METHODS)}."
)
_JIT = flags.DEFINE_bool("jit", True, "Compile the step with XLA.")
_MIXED = flags.DEFINE_bool("mixed_precision", False, "mixed_float16 policy.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored"], "tf.distribute strategy."
)
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per measurement.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Interleaved measurement rounds.")
_SMOKE = flags.DEFINE_bool("smoke", False, "2 rounds of 2 steps (CI).")
_OUTPUT_CSV = flags.DEFINE_string("output_csv", None, "Where to write rows.")


def build_model(name: str) -> tuple:
    """A fresh model and an input shape (one example), for `name`."""
    keras.utils.set_random_seed(0)
    if name == "mlp":  # the demo model: digits, 64-128-128-10
        shape = (64,)
        layers = [
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
        ]
    elif name == "cnn":  # a small CNN on 32x32x3 images
        shape = (32, 32, 3)
        layers = [
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
        ]
    else:  # a CIFAR ResNet-20-style network, LayerNorm so 1-SAM applies
        shape = (32, 32, 3)
        return _resnet(shape), shape
    model = keras.Sequential(
        [keras.Input(shape), *layers, keras.layers.Dense(10, dtype="float32")]
    )
    return model, shape


def _resnet(shape, depth=20, widths=(16, 32, 64)):
    """He et al.'s CIFAR ResNet (6n+2 layers) with LayerNorm."""
    blocks = (depth - 2) // 6
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(widths[0], 3, padding="same")(inputs)
    for stage, width in enumerate(widths):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            x = keras.layers.LayerNormalization()(x)
            x = keras.layers.ReLU()(x)
            if stride > 1 or shortcut.shape[-1] != width:
                shortcut = keras.layers.Conv2D(width, 1, strides=stride)(x)
            x = keras.layers.Conv2D(width, 3, strides=stride, padding="same")(x)
            x = keras.layers.LayerNormalization()(x)
            x = keras.layers.ReLU()(x)
            x = keras.layers.Conv2D(width, 3, padding="same")(x)
            x = keras.layers.Add()([x, shortcut])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="resnet20")


class Runner:
    """One method's compiled model and a repeating batch iterator."""

    def __init__(self, method, model_name, strategy, batch_size, steps, jit):
        self.method = method
        with strategy.scope():
            model, shape = build_model(model_name)
            kwargs = METHODS[method]
            if kwargs is not None:
                per_replica = batch_size // strategy.num_replicas_in_sync
                kwargs = {
                    k: v(per_replica) if callable(v) else v
                    for k, v in kwargs.items()
                }
                model = keras_sam.SAMModel.from_model(model, **kwargs)
            model.compile(
                optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
                jit_compile=jit,
                steps_per_execution=steps,
            )
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch_size, *shape)).astype("float32")
        y = rng.integers(0, 10, size=batch_size)
        self.dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
        self.model = model
        self.steps = steps
        # Warm-up: builds, traces and compiles the train function.
        model.fit(self.dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        self.iterator = iter(
            strategy.experimental_distribute_dataset(self.dataset)
        )

    def seconds_per_step(self) -> float:
        start = time.perf_counter()
        logs = self.model.train_function(self.iterator)
        float(logs["loss"])  # waits for the device
        return (time.perf_counter() - start) / self.steps


def peak_memory_bytes():
    """Peak memory of the first GPU since the last reset, or None on CPU."""
    if not tf.config.list_logical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def main(argv):
    del argv
    steps, rounds = (2, 2) if _SMOKE.value else (_STEPS.value, _ROUNDS.value)
    unknown = set(_METHODS.value) - set(METHODS)
    if unknown:
        raise app.UsageError(f"Unknown --methods {sorted(unknown)}.")
    if _MIXED.value:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    strategy = (
        tf.distribute.MirroredStrategy()
        if _STRATEGY.value == "mirrored"
        else tf.distribute.get_strategy()
    )
    runners, memory = [], {}
    for method in _METHODS.value:
        if peak_memory_bytes() is not None:
            tf.config.experimental.reset_memory_stats("GPU:0")
        runners.append(
            Runner(
                method, _MODEL.value, strategy, _BATCH_SIZE.value, steps,
                _JIT.value,
            )
        )
        memory[method] = peak_memory_bytes()
    times = {r.method: [] for r in runners}
    for _ in range(rounds):
        for runner in runners:
            times[runner.method].append(runner.seconds_per_step())

    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    base = statistics.median(times["sgd"]) if "sgd" in times else None
    rows = []
    for method, values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "model": _MODEL.value,
                "batch_size": _BATCH_SIZE.value,
                "method": method,
                "jit": _JIT.value,
                "mixed_precision": _MIXED.value,
                "strategy": _STRATEGY.value,
                "device": device,
                "median_ms_per_step": 1000 * median,
                "ratio_to_sgd": median / base if base else float("nan"),
                "peak_memory_mb": (
                    memory[method] / 2**20 if memory[method] else float("nan")
                ),
            }
        )
    _print(rows)
    if _OUTPUT_CSV.value:
        with open(_OUTPUT_CSV.value, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _print(rows):
    first = rows[0]
    print(
        f"model={first['model']} batch={first['batch_size']} "
        f"jit={first['jit']} mixed_precision={first['mixed_precision']} "
        f"strategy={first['strategy']} device={first['device']}"
    )
    print(f"{'method':<10}{'ms/step':>10}{'x SGD':>8}{'peak MB':>10}")
    for row in rows:
        print(
            f"{row['method']:<10}{row['median_ms_per_step']:>10.3f}"
            f"{row['ratio_to_sgd']:>8.2f}{row['peak_memory_mb']:>10.1f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
