"""First-call time of SAMModel against plain Keras, in fresh processes.

A user's first `fit` pays for building the model, tracing the step and
compiling it (XLA on TensorFlow and JAX) before any step runs. This tool
times it where it happens, in a fresh Python process per measurement (a
process that already traced or compiled something would pay less), for
two models whose first call is mostly that one-time cost:

- `causal_lm`: a small KerasHub `GPT2CausalLM` built from config (2
  layers, width 64, vocabulary 512, 64 tokens, batch 8, no preprocessor);
  the time of its first batch, `fit` on one batch.
- `unet`: a small U-Net (64x64x3 images, three levels of two convolutions
  with BatchNormalization, transposed convolutions and skip connections,
  2 classes per pixel); the time of its first epoch of 8 batches of 8.

Each child process starts the backend first (one step of a tiny model, as
`tools/benchmark.py` does), so that neither method pays the backend's own
start-up, then builds and compiles the model (`keras.Model`, or the same
model converted by `SAMModel.from_model` with `--rho`), times the first
`fit` (the first call) and a second identical `fit` (the same steps,
traced and compiled: the steady cost). The warm-up is their difference.
`--pairs` pairs of processes run, the order within a pair alternating;
the report gives the medians and the ratio SAM / Keras of each. Each
backend's default compilation (Keras' `jit_compile="auto"`: XLA on
TensorFlow and JAX, eager PyTorch) unless `--nojit`/`--jit`.

Usage (from the repository root; a few minutes a model and backend):

    python tools/first_call.py --model=causal_lm
    python tools/first_call.py --model=unet --backend=jax --pairs=5
    python tools/first_call.py --model=causal_lm --backend=torch
    python tools/first_call.py --model=unet --nojit   # TensorFlow, no XLA
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("causal_lm", "unet")

_BACKEND = flags.DEFINE_enum("backend", "tensorflow", list(BACKENDS),
                             "Keras backend of the child processes.")
_MODEL = flags.DEFINE_enum("model", "causal_lm", list(MODELS), "Model.")
_PAIRS = flags.DEFINE_integer("pairs", 3, "Pairs of fresh processes.")
_RHO = flags.DEFINE_float("rho", 0.05, "SAMModel's rho.")
_JIT = flags.DEFINE_bool(
    "jit", None, "Compile the step (Keras' jit_compile; default 'auto').")
_CHILD = flags.DEFINE_enum(
    "child", None, ["keras", "sam"],
    "Internal: measure one method in this process and print JSON.")


def build(model_name):
    """The model, compiled as its user would, and `fit`'s arguments."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if model_name == "causal_lm":
        import keras_hub

        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=512, num_layers=2, num_heads=2, hidden_dim=64,
            intermediate_dim=128, max_sequence_length=64,
        )
        model = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
        tokens = rng.integers(0, 512, size=(8, 65)).astype("int32")
        x = {"token_ids": tokens[:, :-1],
             "padding_mask": np.ones((8, 64), "int32")}
        data = {"x": x, "y": tokens[:, 1:], "batch_size": 8}
        compile_args = {}  # the task's own defaults (AdamW, its loss)
    else:
        model = unet((64, 64, 3), classes=2)
        data = {
            "x": rng.normal(size=(64, 64, 64, 3)).astype("float32"),
            "y": rng.integers(0, 2, size=(64, 64, 64)),
            "batch_size": 8,
        }
        compile_args = {
            "optimizer": keras.optimizers.Adam(1e-3),
            "loss": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True),
            "metrics": ["accuracy"],
        }
    return model, compile_args, data


def unet(shape, classes):
    """A small U-Net (Ronneberger et al. 2015) of three levels."""
    import keras
    from keras import layers

    def block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    inputs = keras.Input(shape)
    skips, x = [], inputs
    for filters in (16, 32):
        x = block(x, filters)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, 64)
    for filters, skip in zip((32, 16), reversed(skips)):
        x = layers.Conv2DTranspose(filters, 2, strides=2)(x)
        x = block(layers.Concatenate()([x, skip]), filters)
    outputs = layers.Conv2D(classes, 1)(x)
    return keras.Model(inputs, outputs, name="unet")


def measure(method, model_name, rho, jit):
    """{first_call_s, second_call_s} of `method` in this process."""
    import keras
    import numpy as np

    import keras_sam

    if model_name == "causal_lm":
        import keras_hub  # noqa: F401  (its import is not the model's cost)
    jit_compile = "auto" if jit is None else jit
    tiny = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    tiny.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    zeros = np.zeros((2, 4), "float32")
    tiny.fit(zeros, zeros[:, :2], batch_size=2, verbose=0)

    times = {}
    start = time.perf_counter()
    model, compile_args, data = build(model_name)
    model.compile(**compile_args, jit_compile=jit_compile)
    if method == "sam":
        model = keras_sam.SAMModel.from_model(model, rho=rho)
    times["build_s"] = time.perf_counter() - start
    for name in ("first_call_s", "second_call_s"):
        start = time.perf_counter()
        history = model.fit(**data, epochs=1, shuffle=False, verbose=0)
        float(history.history["loss"][-1])
        times[name] = time.perf_counter() - start
    times["warmup_s"] = times["first_call_s"] - times["second_call_s"]
    return times


def child_process(method):
    """Runs this tool as a child measuring `method`; returns its dict."""
    env = dict(os.environ, KERAS_BACKEND=_BACKEND.value)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p])
    command = [sys.executable, os.path.abspath(__file__),
               f"--child={method}", f"--model={_MODEL.value}",
               f"--backend={_BACKEND.value}", f"--rho={_RHO.value}"]
    if _JIT.value is not None:
        command.append("--jit" if _JIT.value else "--nojit")
    result = subprocess.run(command, env=env, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if _CHILD.value:
        if os.environ.get("KERAS_BACKEND") != _BACKEND.value:
            raise app.UsageError("--child runs under the tool's parent only.")
        print(json.dumps(measure(_CHILD.value, _MODEL.value, _RHO.value,
                                 _JIT.value)))
        return
    runs = {"keras": [], "sam": []}
    for pair in range(_PAIRS.value):
        order = ("keras", "sam") if pair % 2 == 0 else ("sam", "keras")
        for method in order:
            runs[method].append(child_process(method))
    jit = "auto" if _JIT.value is None else _JIT.value
    print(f"backend={_BACKEND.value} model={_MODEL.value} jit={jit} "
          f"rho={_RHO.value} pairs={_PAIRS.value} (medians; each run in a "
          "fresh process)")
    print("| quantity | keras.Model s | SAMModel s | SAM / Keras | runs "
          "(Keras; SAM) |")
    print("|---|---:|---:|---:|---|")
    for key in ("first_call_s", "warmup_s", "second_call_s", "build_s"):
        values = {m: [r[key] for r in runs[m]] for m in runs}
        keras_s = statistics.median(values["keras"])
        sam_s = statistics.median(values["sam"])
        listed = "; ".join(
            ", ".join(f"{v:.2f}" for v in values[m]) for m in runs)
        # A warm-up can be ~0 where nothing is traced (eager PyTorch).
        ratio = f"{sam_s / keras_s:.2f}" if keras_s > 0 else "n/a"
        print(f"| {key[:-2]} | {keras_s:.2f} | {sam_s:.2f} | {ratio} "
              f"| {listed} |")


if __name__ == "__main__":
    app.run(main)
