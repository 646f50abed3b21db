"""Step time and memory of SAM and its variants relative to plain SGD.

Builds one model per method, warms each up (tracing and compilation) and
runs one untimed round of all of them, then measures `--rounds` rounds of
`--steps` training steps, interleaving the methods within every round so
that machine noise (other processes on a shared CPU) hits all of them
alike. Reports per method the median seconds
per step, its ratio to SGD and to SAM measured in the same run, the warm-up
(trace + compile) time, and the step's peak tensor memory.

Memory is what TensorFlow's allocator reports for the first device
(`tf.config.experimental.get_memory_info`, CPU or GPU; XLA's buffers are
included): the peak during a round's steps minus the bytes in use just
before them, the largest over the rounds. Everything the models keep
between steps (weights, optimizer state, batches) is excluded, so the
difference to SGD is what the method's step needs on top of SGD's; it is
also given in copies of the trainable weights. On CPU the tool switches
TensorFlow to its BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC=true` unless the
variable is set), because the default one reports only large blocks.
Compiler memory and Python objects are not tensors and are not counted.

Usage (from the repository root):

    python tools/benchmark.py --model=mlp            # the demo MLP, batch 128
    python tools/benchmark.py --model=cnn --rounds=5 --steps=5
    python tools/benchmark.py --model=resnet --nojit --output_csv=/tmp/b.csv
    python tools/benchmark.py --model=wide --nojit  # memory: 25 MB of weights
    python tools/benchmark.py --model=embedding --nojit  # sparse gradients
    python tools/benchmark.py --model=cnn --methods=sgd,sam,sam_m4
    python tools/benchmark.py --strategy=mirrored --logical_cpus=2 --nojit
    python tools/benchmark.py --mixed_precision
    python tools/benchmark.py --smoke   # 2 rounds of 2 steps at batch 16

Methods are the keys of `METHODS`: sgd (the base optimizer), sam, sam_m4
(m = per-replica batch / 4), sam_1 (per-example 1-SAM), and the variants
listed there. Add a variant by adding its `SAMModel` arguments to
`METHODS`; every method runs by default.
"""

import csv
import os
import statistics
import sys
import time

from absl import app
from absl import flags

import keras
import numpy as np
import tensorflow as tf

import keras_sam

# Run as `python tools/<tool>.py`: `experiments` is in the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402
from experiments import models  # noqa: E402

# SAMModel keyword arguments of every method; None is the plain Keras model.
# A callable value is called with the per-replica batch size.
METHODS = {
    "sgd": None,
    "sam": {},
    "sam_m4": {"m": lambda batch: max(batch // 4, 1)},
    "sam_1": {"m": 1},
    "sam_pinf": {"p": float("inf")},
    "sam_random": {"perturbation": "random"},
    "asam": {"adaptive": True},
    "sam_2steps": {"ascent_steps": 2},
    "sam_2nd_order": {"second_order": True},
    "lsam_1": {"m": 1, "gradient_rule": "logit"},
    "jsam_1": {"m": 1, "gradient_rule": "jacobian"},
    "ssam_fisher": {"perturbed_fraction": 0.5},
    "sam_every2": {"sam_every": 2},
    "sam_every5": {"sam_every": 5},
    "late_sam_before": {"sam_from": 10**9},  # late-phase SAM, SGD phase
    "ae_sam": {"trigger": "adaptive"},
    "looksam5": {"sam_every": 5, "off_step": "looksam"},
    "msam": {"perturbation": "momentum"},
    "ssam_fisher_t10": {"perturbed_fraction": 0.5, "mask_update_every": 10},
}

# Default global batch size of each model ("small batch" for the ResNet).
BATCH_SIZES = {"mlp": 128, "cnn": 128, "resnet": 32, "wide": 32,
               "embedding": 32}
# The embedding model's vocabulary and tokens per example: a 51 MB table of
# which a batch touches at most 32 x 64 rows (sparse gradients).
VOCABULARY, TOKENS = 200_000, 64

_MODEL = flags.DEFINE_enum("model", "mlp", sorted(BATCH_SIZES), "Model.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, f"Global batch size. Defaults to {BATCH_SIZES}."
)
_METHODS = flags.DEFINE_list(
    "methods", ",".join(METHODS), f"Any of {list(METHODS)}."
)
_JIT = flags.DEFINE_bool("jit", True, "Compile the step with XLA.")
_MIXED = flags.DEFINE_bool("mixed_precision", False, "mixed_float16 policy.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored"], "tf.distribute strategy."
)
_LOGICAL_CPUS = flags.DEFINE_integer(
    "logical_cpus", 0, "Split the CPU into this many logical devices (for "
    "--strategy=mirrored without accelerators; with --nojit, as XLA cannot "
    "compile a step whose variables are on other logical CPUs); 0 leaves it "
    "whole."
)
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per measurement.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Interleaved measurement rounds.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "2 rounds of 2 steps, batch 16 unless given (CI)."
)
_OUTPUT_CSV = flags.DEFINE_string("output_csv", None, "Where to write rows.")


def build_model(name: str):
    """A fresh model and the shape of one example, for `name`."""
    keras.utils.set_random_seed(0)
    if name == "mlp":  # the demo model: digits, 64-128-128-10
        return models.mlp((64,), 10), (64,)
    if name == "embedding":  # row-sparse gradients of a large table
        return keras.Sequential([
            keras.Input((TOKENS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 64),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(10),
        ]), (TOKENS,)
    if name == "wide":  # weights (25 MB) dwarf activations: the memory model
        return keras.Sequential([
            keras.Input((1024,)),
            keras.layers.Dense(2048, activation="relu"),
            keras.layers.Dense(2048, activation="relu"),
            keras.layers.Dense(10),
        ]), (1024,)
    shape = (32, 32, 3)
    if name == "resnet":  # He et al.'s CIFAR ResNet-20, LayerNorm: 1-SAM
        return models.cifar_resnet(shape, 10, depth=20, norm="layer"), shape
    model = keras.Sequential([  # a small CNN on 32x32x3 images
        keras.Input(shape),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, dtype="float32"),
    ])
    return model, shape


def method_kwargs(method: str, per_replica_batch: int):
    """`SAMModel` arguments of `method`, or None for the plain model."""
    kwargs = METHODS[method]
    if kwargs is None:
        return None
    return {
        k: v(per_replica_batch) if callable(v) else v
        for k, v in kwargs.items()
    }


class Runner:
    """One method's compiled model, warmed up, and a repeating batch."""

    def __init__(self, method, model_name, strategy, batch_size, steps, jit):
        self.method = method
        self.steps = steps
        # Keras 3.15 on TF 2.21 fails to run steps_per_execution > 1 under a
        # MirroredStrategy of several devices ("You must feed a value for
        # placeholder ..."), even for a plain model: call once per step.
        several = strategy.num_replicas_in_sync > 1
        self.calls, per_call = (steps, 1) if several else (1, steps)
        per_replica = batch_size // strategy.num_replicas_in_sync
        self.kwargs = method_kwargs(method, per_replica)
        m = (self.kwargs or {}).get("m")
        self.groups = per_replica // m if m else 1
        with strategy.scope():
            model, shape = build_model(model_name)
            if self.kwargs is not None:
                model = keras_sam.SAMModel.from_model(model, **self.kwargs)
            model.compile(
                optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
                jit_compile=jit,
                steps_per_execution=per_call,
            )
        self.weight_bytes = sum(
            int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            for v in model.trainable_variables
        )
        rng = np.random.default_rng(0)
        if model_name == "embedding":  # Zipf-like tokens: many repeats
            x = np.minimum(rng.zipf(1.3, size=(batch_size, *shape)),
                           VOCABULARY - 1).astype("int32")
        else:
            x = rng.normal(size=(batch_size, *shape)).astype("float32")
        y = rng.integers(0, 10, size=batch_size)
        dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
        self.model = model
        start = time.perf_counter()  # builds, traces and compiles the step
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        self.iterator = iter(strategy.experimental_distribute_dataset(dataset))
        self.measure(None)  # traces again, for this iterator
        self.warmup_seconds = time.perf_counter() - start

    def measure(self, device):
        """Seconds per step and the peak bytes above those in use before."""
        before = _memory_in_use(device, reset=True) if device else None
        start = time.perf_counter()
        for _ in range(self.calls):
            logs = self.model.train_function(self.iterator)
        float(logs["loss"])  # waits for the device
        seconds = (time.perf_counter() - start) / self.steps
        if before is None:
            return seconds, None
        peak = tf.config.experimental.get_memory_info(device)["peak"]
        return seconds, peak - before


def _memory_in_use(device, reset=False):
    """Bytes the allocator of `device` holds, or None if it cannot say."""
    try:
        if reset:
            tf.config.experimental.reset_memory_stats(device)
        return tf.config.experimental.get_memory_info(device)["current"]
    except (ValueError, RuntimeError, tf.errors.OpError):
        return None


def run(model_name, methods, batch_size, steps, rounds, jit, strategy):
    """Measures `methods` interleaved; returns one row (a dict) per method."""
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    runners = [
        Runner(method, model_name, strategy, batch_size, steps, jit)
        for method in methods
    ]
    for runner in runners:  # one untimed round: the first calls are slow
        runner.measure(None)
    times = {r.method: [] for r in runners}
    memory = {r.method: [] for r in runners}
    for _ in range(rounds):
        for runner in runners:
            seconds, peak = runner.measure(device)
            times[runner.method].append(seconds)
            if peak is not None:
                memory[runner.method].append(peak)
    medians = {k: statistics.median(v) for k, v in times.items()}
    peaks = {k: max(v) if v else float("nan") for k, v in memory.items()}
    nan = float("nan")
    rows = []
    for runner in runners:
        method = runner.method
        extra = peaks[method] - peaks.get("sgd", nan)
        rows.append(
            {
                "model": model_name,
                "batch_size": batch_size,
                "method": method,
                "groups": runner.groups,
                "jit": jit,
                "mixed_precision": _MIXED.value,
                "strategy": _STRATEGY.value,
                "replicas": strategy.num_replicas_in_sync,
                "device": device,
                "median_ms_per_step": 1000 * medians[method],
                "ratio_to_sgd": medians[method] / medians.get("sgd", nan),
                "ratio_to_sam": medians[method] / medians.get("sam", nan),
                "warmup_s": runner.warmup_seconds,
                "step_peak_mb": peaks[method] / 2**20,
                "extra_mb_vs_sgd": extra / 2**20,
                "extra_weight_copies": extra / runner.weight_bytes,
                "weights_mb": runner.weight_bytes / 2**20,
            }
        )
    return rows


def main(argv):
    del argv
    unknown = set(_METHODS.value) - set(METHODS)
    if unknown:
        raise app.UsageError(
            f"Unknown --methods {sorted(unknown)}; choose from {list(METHODS)}."
        )
    # TensorFlow's default CPU allocator (oneDNN's) reports only large
    # blocks; its BFC allocator counts every tensor. Read at the first
    # allocation, so set before anything initialises TensorFlow.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    if _LOGICAL_CPUS.value:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu,
            [tf.config.LogicalDeviceConfiguration()] * _LOGICAL_CPUS.value,
        )
    tf.get_logger().setLevel("ERROR")  # retracing notes of the 5 models
    if _MIXED.value:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    steps, rounds = (2, 2) if _SMOKE.value else (_STEPS.value, _ROUNDS.value)
    batch_size = _BATCH_SIZE.value or (
        16 if _SMOKE.value else BATCH_SIZES[_MODEL.value]
    )
    strategy = common.make_strategy(_STRATEGY.value)
    rows = run(
        _MODEL.value, _METHODS.value, batch_size, steps, rounds, _JIT.value,
        strategy,
    )
    print_table(rows)
    if _OUTPUT_CSV.value:
        with open(_OUTPUT_CSV.value, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def print_table(rows):
    """Prints the rows as a Markdown table, after a line of settings."""
    first = rows[0]
    print(
        f"model={first['model']} batch={first['batch_size']} "
        f"jit={first['jit']} mixed_precision={first['mixed_precision']} "
        f"strategy={first['strategy']} replicas={first['replicas']} "
        f"device={first['device']}"
    )
    print(
        "| method | groups | ms/step | x SGD | x SAM | warm-up s "
        "| step peak MB | extra MB vs SGD | extra / weights |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['groups']} "
            f"| {r['median_ms_per_step']:.2f} | {r['ratio_to_sgd']:.2f} "
            f"| {r['ratio_to_sam']:.2f} | {r['warmup_s']:.1f} "
            f"| {r['step_peak_mb']:.2f} | {r['extra_mb_vs_sgd']:.2f} "
            f"| {r['extra_weight_copies']:.2f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
