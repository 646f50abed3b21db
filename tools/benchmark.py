"""Step time, first-call time and memory of SAM and its variants, per backend.

Runs on the Keras backend `--backend` names (tensorflow, jax or torch;
default tensorflow). Keras reads its backend once, at import, so the tool
reads the flag from the command line and sets `KERAS_BACKEND` before it
imports Keras, keras_sam or the experiments (the variable the shell sets
is overridden: the flag decides).

Starts the backend (one step of a tiny model, so that no method's first
call pays for it), builds one model per method, times its first training
call, runs one untimed round of all of them, then measures `--rounds`
rounds of `--steps` training steps on one fixed in-memory batch,
interleaving the methods within every round so that machine noise (other
processes on a shared CPU) hits all of them alike; the report takes the
median over rounds. A round's seconds per step are its wall time over its
steps, the loss read back at its end (so the device has finished). What a
round calls:

- JAX and PyTorch: `model.fit` for one epoch (`verbose=0`, no shuffling)
  on NumPy arrays that hold the batch `--steps` times. Their trainers loop
  over the steps in Python, so a step includes what any `fit` pays per
  step (feeding the batch, Keras' loop); the call's fixed set-up
  (callbacks, data adapter: about 2 ms on JAX, 3-10 ms on PyTorch) is
  spread over `--steps` steps. (`train_on_batch` would copy the state back
  into the variables after every step on JAX: 30 ms a call.)
- TensorFlow: Keras' compiled step, `model.train_function`, on one
  iterator over a `tf.data` dataset of the batch: `--steps` steps in one
  compiled loop (`steps_per_execution`), as `fit` runs them, without
  fit's set-up per call (about 10 ms on TensorFlow) and with the memory
  statistics around the steps alone.

Reports per method the median ms per step, its ratio to SGD and to SAM
measured in the same run on the same backend, the warm-up and its ratio to
SGD's, and the step's peak memory. The warm-up (`warmup_s`) is the one-time
cost of the first call (building the model and optimizer, tracing,
compiling: XLA on TensorFlow and JAX, `torch.compile` under `--jit` on
PyTorch): the wall time of the first call, a `model.fit` of `--steps`
steps on every backend, less those steps at the method's median step time
(`first_call_s` is the raw wall time; 0 where the difference is in the
noise, as in eager PyTorch).

Memory on TensorFlow is what its allocator reports for the first device
(`tf.config.experimental.get_memory_info`, CPU or GPU; XLA's buffers are
included): the peak during a round minus the bytes in use just before it,
the largest over the rounds. Everything the models keep between steps
(weights, optimizer state, the dataset) is excluded, so the difference to
SGD is what the method's step needs on top of SGD's; it is also given in
copies of the trainable weights. On CPU the tool switches TensorFlow to its
BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC=true` unless the variable is set),
because the default one reports only large blocks. Compiler memory and
Python objects are not tensors and are not counted. PyTorch on a GPU
reports the same quantity (`torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats`). PyTorch on CPU keeps no statistics, and JAX
cannot reset its peak counter (`Device.memory_stats()["peak_bytes_in_use"]`
is the process's peak, so interleaved methods cannot be told apart): those
report NaN.

Usage (from the repository root):

    python tools/benchmark.py --model=mlp            # the demo MLP, batch 128
    python tools/benchmark.py --model=cnn --rounds=5 --steps=5
    python tools/benchmark.py --backend=jax --model=cnn --methods=sgd,sam
    python tools/benchmark.py --backend=torch --model=resnet --methods=sgd,sam
    python tools/benchmark.py --model=resnet --nojit --output_csv=/tmp/b.csv
    python tools/benchmark.py --model=wide --nojit  # memory: 25 MB of weights
    python tools/benchmark.py --model=embedding --nojit  # sparse gradients
    python tools/benchmark.py --model=cnn --methods=sgd,sam,sam_m4
    python tools/benchmark.py --strategy=mirrored --logical_cpus=2 --nojit
    python tools/benchmark.py --mixed_precision
    python tools/benchmark.py --smoke   # 2 rounds of 2 steps at batch 16

`--jit` compiles the step: XLA on TensorFlow and JAX (on by default, as
Keras' `jit_compile="auto"`), `torch.compile` on PyTorch (off by default,
as Keras' "auto"). `--strategy` and `--logical_cpus` are
`tf.distribute`'s and refused on the other backends.

Methods are the keys of `METHODS`: sgd (the base optimizer), sam, sam_m4
(m = per-replica batch / 4), sam_1 (per-example 1-SAM), and the variants
listed there. Add a variant by adding its `SAMModel` arguments to
`METHODS`; every method runs by default. keras_sam refuses at
construction an option the current backend's step does not have
(`keras_sam.backend.check_options`; as of this writing only
`sync_moving_statistics=True`, off TensorFlow): by default the tool runs
the methods the backend takes and prints the others with keras_sam's
reason; a refused method named in `--methods` is a usage error.
`--dry_run` builds and compiles every method's model and runs no step.
"""

import contextlib
import csv
import os
import statistics
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")


def backend_from_argv(argv) -> str:
    """The value of `--backend` in `argv` (before absl parses it)."""
    backend = "tensorflow"
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        if arg.startswith("--backend="):
            backend = arg.split("=", 1)[1]
        elif arg == "--backend" and i + 1 < len(argv):
            backend = argv[i + 1]
    return backend


if __name__ == "__main__" and backend_from_argv(sys.argv) in BACKENDS:
    # Before Keras is imported: it picks its backend once, at import. (An
    # unknown value is left to the --backend flag's usage error.)
    os.environ["KERAS_BACKEND"] = backend_from_argv(sys.argv)
    # TensorFlow's default CPU allocator (oneDNN's) reports only large
    # blocks; its BFC allocator counts every tensor. Read when TensorFlow
    # starts, so set before anything imports it.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sam  # noqa: E402
from keras_sam import backend as sam_backend  # noqa: E402
from keras_sam.core.options import SAMOptions  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf  # noqa: E402

# Run as `python tools/<tool>.py`: `experiments` is in the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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

_BACKEND = flags.DEFINE_enum(
    "backend", "tensorflow", list(BACKENDS),
    "Keras backend; sets KERAS_BACKEND before Keras is imported.",
)
_MODEL = flags.DEFINE_enum("model", "mlp", sorted(BATCH_SIZES), "Model.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, f"Global batch size. Defaults to {BATCH_SIZES}."
)
_METHODS = flags.DEFINE_list(
    "methods", None,
    f"Any of {list(METHODS)}. Default: every method the backend takes.",
)
_JIT = flags.DEFINE_bool(
    "jit", None, "Compile the step: XLA on TensorFlow and JAX (default on), "
    "torch.compile on PyTorch (default off), as Keras' jit_compile='auto'."
)
_MIXED = flags.DEFINE_bool("mixed_precision", False, "mixed_float16 policy.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored"],
    "tf.distribute strategy (TensorFlow only).",
)
_LOGICAL_CPUS = flags.DEFINE_integer(
    "logical_cpus", 0, "Split the CPU into this many logical devices (for "
    "--strategy=mirrored without accelerators; with --nojit, as XLA cannot "
    "compile a step whose variables are on other logical CPUs); 0 leaves it "
    "whole. TensorFlow only."
)
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per measurement.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Interleaved measurement rounds.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "2 rounds of 2 steps, batch 16 unless given (CI)."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Build and compile every method's model, print which "
    "the backend refuses, and run no step (checks METHODS quickly)."
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


def refusal(method: str, per_replica_batch: int):
    """Why the current backend's SAMModel refuses `method`, or None.

    The same check `SAMModel` makes at construction
    (`keras_sam.backend.check_options`), from the method's arguments; an
    invalid option value is not a refusal and raises.
    """
    kwargs = method_kwargs(method, per_replica_batch)
    if kwargs is None:
        return None
    options = SAMOptions(**kwargs)
    try:
        sam_backend.check_options(options)
    except ValueError as error:
        return str(error)
    return None


def example_batch(model_name, shape, batch_size):
    """One fixed batch (x, y) of NumPy arrays."""
    rng = np.random.default_rng(0)
    if model_name == "embedding":  # Zipf-like tokens: many repeats
        x = np.minimum(rng.zipf(1.3, size=(batch_size, *shape)),
                       VOCABULARY - 1).astype("int32")
    else:
        x = rng.normal(size=(batch_size, *shape)).astype("float32")
    return x, rng.integers(0, 10, size=batch_size)


def compiled_model(method, model_name, per_replica_batch, jit,
                   steps_per_execution=1):
    """`method`'s model for `model_name`, compiled (in the current
    strategy scope on TensorFlow), and the shape of one example."""
    model, shape = build_model(model_name)
    kwargs = method_kwargs(method, per_replica_batch)
    if kwargs is not None:
        model = keras_sam.SAMModel.from_model(model, **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
        steps_per_execution=steps_per_execution,
    )
    return model, shape


def groups_of(method, per_replica_batch):
    """How many m-groups a replica's batch is split into."""
    m = (method_kwargs(method, per_replica_batch) or {}).get("m")
    return per_replica_batch // m if m else 1


class Runner:
    """One method's compiled model, warmed up, and its fixed batch."""

    def __init__(self, method, model_name, batch_size, steps, jit,
                 strategy=None):
        self.method = method
        self.steps = steps
        tensorflow = keras.backend.backend() == "tensorflow"
        replicas = strategy.num_replicas_in_sync if strategy else 1
        per_replica = batch_size // replicas
        self.groups = groups_of(method, per_replica)
        # Keras 3.15 on TF 2.21 fails to run steps_per_execution > 1 under a
        # MirroredStrategy of several devices ("You must feed a value for
        # placeholder ..."), even for a plain model: one step per call
        # there. JAX and PyTorch loop over the steps in Python either way.
        self.calls, per_call = (
            (1, steps) if tensorflow and replicas == 1 else (steps, 1)
        )
        with strategy.scope() if strategy else contextlib.nullcontext():
            model, shape = compiled_model(
                method, model_name, per_replica, jit, per_call
            )
        self.model = model
        self.weight_bytes = sum(
            int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            for v in model.trainable_variables
        )
        x, y = example_batch(model_name, shape, batch_size)
        if tensorflow:  # a dataset, made once
            dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
            self.fit_data = {"x": dataset, "steps_per_epoch": steps}
        else:  # the batch `steps` times, in order
            self.fit_data = {
                "x": np.concatenate([x] * steps),
                "y": np.concatenate([y] * steps),
                "batch_size": batch_size,
            }
        start = time.perf_counter()  # builds, traces and compiles the step
        float(self._fit())
        self.first_call_seconds = time.perf_counter() - start
        self._steps = self._fit
        if tensorflow:
            # Keras' compiled step on one iterator: no fit set-up per round.
            self.iterator = iter(
                strategy.experimental_distribute_dataset(dataset)
            )
            self._steps = self._train_function

    def _fit(self):
        history = self.model.fit(
            **self.fit_data, epochs=1, shuffle=False, verbose=0
        )
        return history.history["loss"][-1]

    def _train_function(self):
        for _ in range(self.calls):
            logs = self.model.train_function(self.iterator)
        return logs["loss"]

    def measure(self, memory):
        """Seconds per step and the peak bytes above those in use before
        (None where `memory` cannot say)."""
        before = memory.reset() if memory else None
        start = time.perf_counter()
        float(self._steps())  # waits for the device
        seconds = (time.perf_counter() - start) / self.steps
        if before is None:
            return seconds, None
        return seconds, memory.peak() - before


class TensorFlowMemory:
    """TensorFlow's allocator statistics of one device."""

    def __init__(self, device):
        self.device = device

    def reset(self):
        """Bytes in use after resetting the peak, or None if unknown."""
        try:
            tf.config.experimental.reset_memory_stats(self.device)
            return tf.config.experimental.get_memory_info(self.device)[
                "current"]
        except (ValueError, RuntimeError, tf.errors.OpError):
            return None

    def peak(self):
        return tf.config.experimental.get_memory_info(self.device)["peak"]


class TorchCudaMemory:
    """PyTorch's CUDA allocator statistics of the current GPU."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda

    def reset(self):
        self.cuda.synchronize()
        self.cuda.reset_peak_memory_stats()
        return self.cuda.memory_allocated()

    def peak(self):
        return self.cuda.max_memory_allocated()


def device_and_memory(backend):
    """The device the steps run on ("CPU:0", "GPU:0", ...) and a memory
    probe for it, or None where the backend keeps no resettable peak."""
    if backend == "tensorflow":
        device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
        return device, TensorFlowMemory(device)
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "GPU:0", TorchCudaMemory()
        return "CPU:0", None
    import jax

    platform = jax.devices()[0].platform
    return f"{'CPU' if platform == 'cpu' else platform.upper()}:0", None


def run(model_name, methods, batch_size, steps, rounds, jit, strategy=None):
    """Measures `methods` interleaved; returns one row (a dict) per method.

    `strategy` is a `tf.distribute.Strategy` on TensorFlow, None elsewhere.
    """
    backend = keras.backend.backend()
    device, memory = device_and_memory(backend)
    replicas = strategy.num_replicas_in_sync if strategy else 1
    warm_up_backend(jit, strategy)
    runners = [
        Runner(method, model_name, batch_size, steps, jit, strategy)
        for method in methods
    ]
    for runner in runners:  # one untimed round: the first calls are slow
        runner.measure(None)
    times = {r.method: [] for r in runners}
    peaks = {r.method: [] for r in runners}
    for _ in range(rounds):
        for runner in runners:
            seconds, peak = runner.measure(memory)
            times[runner.method].append(seconds)
            if peak is not None:
                peaks[runner.method].append(peak)
    nan = float("nan")
    medians = {k: statistics.median(v) for k, v in times.items()}
    peaks = {k: max(v) if v else nan for k, v in peaks.items()}
    # The first call less its steps at the median: build, trace, compile.
    warmups = {
        r.method: max(r.first_call_seconds - steps * medians[r.method], 0.0)
        for r in runners
    }
    rows = []
    for runner in runners:
        method = runner.method
        extra = peaks[method] - peaks.get("sgd", nan)
        rows.append(
            {
                "backend": backend,
                "model": model_name,
                "batch_size": batch_size,
                "method": method,
                "groups": runner.groups,
                "jit": jit,
                "mixed_precision": _MIXED.value,
                "strategy": _STRATEGY.value,
                "replicas": replicas,
                "device": device,
                "median_ms_per_step": 1000 * medians[method],
                "ratio_to_sgd": medians[method] / medians.get("sgd", nan),
                "ratio_to_sam": medians[method] / medians.get("sam", nan),
                "first_call_s": runner.first_call_seconds,
                "warmup_s": warmups[method],
                "warmup_ratio_to_sgd": _ratio(
                    warmups[method], warmups.get("sgd", nan)
                ),
                "step_peak_mb": peaks[method] / 2**20,
                "extra_mb_vs_sgd": extra / 2**20,
                "extra_weight_copies": extra / runner.weight_bytes,
                "weights_mb": runner.weight_bytes / 2**20,
            }
        )
    return rows


def warm_up_backend(jit, strategy=None):
    """One step of a tiny model, so that the first method's first call
    does not pay the backend's own start-up (XLA's compiler, thread pools,
    the first kernels) for all of them."""
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss="mse", jit_compile=jit)
    x = np.zeros((2, 4), "float32")
    model.fit(x, x[:, :2], batch_size=2, epochs=1, verbose=0)


def _ratio(a, b):
    return a / b if b else float("nan")


def default_jit(backend):
    """Keras' jit_compile="auto": XLA on TensorFlow and JAX, no
    torch.compile on PyTorch."""
    return backend != "torch"


def main(argv):
    del argv
    backend = _BACKEND.value
    if keras.backend.backend() != backend:
        raise app.UsageError(
            f"--backend={backend}, but Keras was imported with the "
            f"{keras.backend.backend()} backend: run the tool as a script "
            "(python tools/benchmark.py ...), which sets KERAS_BACKEND "
            "before Keras is imported."
        )
    if backend != "tensorflow":
        for flag in (_STRATEGY, _LOGICAL_CPUS):
            if flags.FLAGS[flag.name].present:
                raise app.UsageError(
                    f"--{flag.name} is tf.distribute's: TensorFlow only, not "
                    f"--backend={backend}."
                )
    steps, rounds = (2, 2) if _SMOKE.value else (_STEPS.value, _ROUNDS.value)
    batch_size = _BATCH_SIZE.value or (
        16 if _SMOKE.value else BATCH_SIZES[_MODEL.value]
    )
    jit = default_jit(backend) if _JIT.value is None else _JIT.value
    strategy = None
    if backend == "tensorflow":
        strategy = start_tensorflow()
    replicas = strategy.num_replicas_in_sync if strategy else 1
    per_replica = batch_size // replicas
    methods, refused = choose_methods(_METHODS.value, backend, per_replica)
    if _MIXED.value:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    if _DRY_RUN.value:
        for method in methods:
            with strategy.scope() if strategy else contextlib.nullcontext():
                compiled_model(method, _MODEL.value, per_replica, jit)
            print(f"built on {backend}: {method} "
                  f"({groups_of(method, per_replica)} groups)")
    else:
        rows = run(
            _MODEL.value, methods, batch_size, steps, rounds, jit, strategy
        )
        print_table(rows)
    for method, reason in refused.items():
        print(f"skipped on {backend}: {method} ({reason})")
    sys.stdout.flush()
    if _OUTPUT_CSV.value and not _DRY_RUN.value:
        with open(_OUTPUT_CSV.value, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def choose_methods(named, backend, per_replica_batch):
    """The methods to run and {method: why the backend refuses it}.

    `named` is `--methods` (None: every method of METHODS). A method the
    backend refuses is skipped unless named, which is a usage error.
    """
    methods = list(METHODS) if named is None else named
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise app.UsageError(
            f"Unknown --methods {sorted(unknown)}; choose from "
            f"{list(METHODS)}."
        )
    refused = {
        method: reason
        for method in methods
        if (reason := refusal(method, per_replica_batch))
    }
    if refused and named is not None:
        raise app.UsageError(
            "".join(
                f"--methods={method}: keras_sam refuses it on "
                f"--backend={backend}: {reason}\n"
                for method, reason in refused.items()
            ) + "Leave it out of --methods, or use --backend=tensorflow."
        )
    methods = [m for m in methods if m not in refused]
    if not methods:
        raise app.UsageError(f"No method runs on --backend={backend}.")
    return methods, refused


def start_tensorflow():
    """Logical devices and logging; returns the strategy."""
    if _LOGICAL_CPUS.value:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu,
            [tf.config.LogicalDeviceConfiguration()] * _LOGICAL_CPUS.value,
        )
    tf.get_logger().setLevel("ERROR")  # retracing notes of the models
    from experiments import common

    return common.make_strategy(_STRATEGY.value)


def print_table(rows):
    """Prints the rows as a Markdown table, after a line of settings."""
    first = rows[0]
    print(
        f"backend={first['backend']} model={first['model']} "
        f"batch={first['batch_size']} jit={first['jit']} "
        f"mixed_precision={first['mixed_precision']} "
        f"strategy={first['strategy']} replicas={first['replicas']} "
        f"device={first['device']}"
    )
    print(
        "| method | groups | ms/step | x SGD | x SAM | warm-up s "
        "| warm-up x SGD | step peak MB | extra MB vs SGD | extra / weights |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['groups']} "
            f"| {r['median_ms_per_step']:.2f} | {r['ratio_to_sgd']:.2f} "
            f"| {r['ratio_to_sam']:.2f} | {r['warmup_s']:.2f} "
            f"| {r['warmup_ratio_to_sgd']:.2f} "
            f"| {r['step_peak_mb']:.2f} | {r['extra_mb_vs_sgd']:.2f} "
            f"| {r['extra_weight_copies']:.2f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
