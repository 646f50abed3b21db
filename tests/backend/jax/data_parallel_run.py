"""SAMModel under `keras.distribution.DataParallel` on 4 JAX CPU devices.

Run as `KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=4
python -m tests.backend.jax.data_parallel_run` (the test does); prints JSON:

- `dp_vs_m4`: one step under DataParallel against one step on one device
  with m = 4 (each device's 4 examples a group, the groups' mean);
- `dp_vs_whole`: against whole-batch SAM (one eps for all 16);
- `dp_m16_vs_whole`: DataParallel with m = 16 (one group) against it;
- `mp_*`: one step under `ModelParallel` on a 2 x 2 mesh (kernels split
  over "model", the batch over "batch"), against one device with m = 8
  (each batch shard a group) and against whole-batch SAM;
- `all_reduces`: per program, the result shapes of each all-reduce in the
  compiled step (`m_sharpness`: DataParallel's default; `whole`: m = 16),
  and `all_gathers`, their count.
"""

import json
import re

import jax
import keras
import numpy as np

import keras_sam

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 5)).astype("float32")
Y = RNG.integers(0, 3, size=16).astype("int32")
INITIAL = [RNG.normal(size=(5, 6)).astype("float32"), np.zeros(6, "float32"),
           RNG.normal(size=(6, 3)).astype("float32"), np.zeros(3, "float32")]


def build(**options):
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    model = keras_sam.SAMModel(
        inputs, keras.layers.Dense(3, name="logits")(hidden), rho=0.5,
        **options)
    model.set_weights(INITIAL)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    return model


def one_step(model) -> list:
    model.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()]


def difference(a, b) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


def collectives(model, distribution) -> dict:
    """The all-reduces and all-gathers of the model's compiled step."""
    model.make_train_function(force=True)
    state = tuple(
        [v.value for v in variables]
        for variables in (model.trainable_variables,
                          model.non_trainable_variables,
                          model.optimizer.variables, model.metrics_variables)
    )
    sharding = jax.sharding.NamedSharding(
        distribution.device_mesh.backend_mesh,
        jax.sharding.PartitionSpec(distribution.batch_dim_name),
    )
    data = (jax.device_put(X, sharding), jax.device_put(Y, sharding))
    text = jax.jit(model.train_step).lower(state, data).compile().as_text()
    reduces = re.findall(r"%all-reduce[.\d]* = (.*?) all-reduce\(", text)
    return {"all_reduces": reduces, "all_gathers": text.count("all-gather")}


def model_parallel(devices):
    """A 2 x 2 mesh: the batch split in two, each kernel split over the
    other axis (the hidden units)."""
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    layouts = keras.distribution.LayoutMap(mesh)
    layouts["hidden/kernel"] = (None, "model")
    layouts["logits/kernel"] = ("model", None)
    return keras.distribution.ModelParallel(layout_map=layouts,
                                            batch_dim_name="batch")


def main():
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == 4, devices
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    sharded, whole_sharded = build(), build(m=16)
    parallel, parallel_whole = one_step(sharded), one_step(whole_sharded)
    keras.distribution.set_distribution(None)
    grouped, whole = one_step(build(m=4)), one_step(build())
    keras.distribution.set_distribution(model_parallel(devices))
    split = build()
    sharding = list(split.get_layer("hidden").kernel.value.sharding.spec)
    split = one_step(split)
    keras.distribution.set_distribution(None)
    grouped_by_8 = one_step(build(m=8))
    keras.distribution.set_distribution(distribution)
    print(json.dumps({
        "mp_kernel_sharding": sharding,
        "mp_vs_m8": difference(split, grouped_by_8),
        "mp_vs_whole": difference(split, whole),
        "dp_vs_m4": difference(parallel, grouped),
        "dp_vs_whole": difference(parallel, whole),
        "dp_m16_vs_whole": difference(parallel_whole, whole),
        "m_sharpness": collectives(sharded, distribution),
        "whole": collectives(whole_sharded, distribution),
    }))


if __name__ == "__main__":
    main()
