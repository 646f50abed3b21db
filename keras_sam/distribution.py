"""`fit`, `evaluate` and `predict` under `MultiWorkerMirroredStrategy`.

Keras 3 (checked on 3.15.1 with TensorFlow 2.21) cannot train any model,
plain `keras.Model` included, under `tf.distribute.
MultiWorkerMirroredStrategy` (MWMS) with more than one worker:

1. `_maybe_symbolic_build` builds the model from the first batch reduced
   with `strategy.reduce("MEAN", batch, axis=None)`, which fails on the
   nested per-replica batch: "Attempt to convert a value (PerReplica...) to
   a Tensor" (keras-team/keras#20585).
2. The step's logs are then reduced across workers with
   `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalar
   logs every `train_step`/`test_step` returns (tensorflow/tensorflow
   #72388).

`MultiWorkerFix` works around both, only under a multi-worker MWMS: it
builds from the first replica's local batch
(`strategy.experimental_local_results(batch)[0]`, same shapes), and
reshapes the step's scalar logs to shape `[1]`, so that the mean over
axis 0 across workers is valid and gives back a scalar. Mix it in front
of any model class:

    class MyModel(MultiWorkerFix, keras.Model): ...
    class MySAM(MultiWorkerFix, keras_sam.SAMModel): ...

or give one existing model the fix with `enable_multi_worker_fit(model)`.

Each workaround switches itself off when Keras is fixed: `keras_bugs()`
reads the source of the two Keras functions and reports a bug as present
only while the failing call is still there (`distribute_strategy.reduce(`
in `TensorFlowTrainer._maybe_symbolic_build`; `strategy.reduce("MEAN", v,
axis=0)` in `reduce_per_replica`). Both workarounds are also correct on a
fixed Keras, so a source that cannot be read counts as "bug present".

The mixin also turns two settings that cannot work into clear errors at
`compile` and at `fit`/`evaluate` time, instead of a graph error from
inside TensorFlow:

* `jit_compile=True` under MWMS on CPU workers: XLA on CPU has no
  collective ops. Fix: `jit_compile=False`.
* `steps_per_execution > 1` with collective all-reduce (MWMS, or
  `MirroredStrategy` with its default cross-device ops) over more than one
  replica: the multi-step loop fails with "You must feed a value for
  placeholder" (keras-team/keras#19246). Fix: `tf.distribute.
  MirroredStrategy(cross_device_ops=tf.distribute.ReductionToOneDevice())`
  or `steps_per_execution=1` (MWMS has no other cross-device ops).

All of this is about `tf.distribute`, so it concerns the TensorFlow
backend only. On the JAX and PyTorch backends the module imports without
TensorFlow, `MultiWorkerFix` passes every call straight to Keras' own
method, `check_distribution_settings` checks nothing and `is_multi_worker`
and `uses_collective_all_reduce` are False.
"""

import functools
import inspect
import json
import socket

import keras

from keras_sam import _keras
from keras_sam import _optional

# Imported at first use: the module imports on every backend.
tf = _optional.LazyTensorFlow("keras_sam.distribution")

ISSUE_BUILD = "keras-team/keras#20585"
ISSUE_LOGS = "tensorflow/tensorflow#72388"
ISSUE_STEPS = "keras-team/keras#19246"


def _on_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow, the one backend with tf.distribute."""
    return keras.backend.backend() == "tensorflow"


@functools.lru_cache(maxsize=None)
def keras_bugs():
    """Which multi-worker bugs the installed Keras still has.

    Returns:
        A dict with boolean entries "build" (keras-team/keras#20585: the
        input batch is reduced across workers to build the model) and
        "scalar_logs" (tensorflow/tensorflow#72388: scalar logs are
        reduced over axis 0). A source that cannot be read counts as True.
    """
    sites = _keras.multi_worker_bug_sites()

    def still_has(function, text):
        try:
            return text in inspect.getsource(function)
        except (OSError, TypeError):
            return True

    return {
        "build": still_has(sites["build"], "distribute_strategy.reduce("),
        "scalar_logs": still_has(
            sites["scalar_logs"], 'strategy.reduce("MEAN", v, axis=0)'
        ),
    }


def is_multi_worker(strategy) -> bool:
    """True for a `MultiWorkerMirroredStrategy` over more than one worker
    (always False off the TensorFlow backend)."""
    if not _on_tensorflow():
        return False
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return _keras.in_multi_worker_mode(strategy)


def uses_collective_all_reduce(strategy) -> bool:
    """True if `strategy` all-reduces with collective ops (MWMS, Mirrored).

    `MirroredStrategy()` defaults to `CollectiveAllReduce` since TF 2.x;
    `ReductionToOneDevice`, `HierarchicalCopyAllReduce` and `NcclAllReduce`
    given as `cross_device_ops` are not collective. Always False off the
    TensorFlow backend.
    """
    if not _on_tensorflow():
        return False
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    if not isinstance(strategy, tf.distribute.MirroredStrategy):
        return False
    return _keras.uses_collective_ops(strategy)


def _workers_are_cpus(strategy) -> bool:
    devices = getattr(strategy.extended, "worker_devices", ())
    return not any("GPU" in d.upper() or "TPU" in d.upper() for d in devices)


def check_distribution_settings(model):
    """Raises a ValueError naming the fix for settings that cannot work.

    Does nothing off the TensorFlow backend (no tf.distribute strategy).

    Args:
        model: A compiled `keras.Model`.

    Raises:
        ValueError: `jit_compile=True` under a multi-worker MWMS on CPUs,
            or `steps_per_execution > 1` with collective all-reduce over
            more than one replica (keras-team/keras#19246).
    """
    if not _on_tensorflow():
        return
    strategy = model.distribute_strategy
    name = type(strategy).__name__
    if model.jit_compile and is_multi_worker(strategy):
        if _workers_are_cpus(strategy):
            raise ValueError(
                f"jit_compile={model.jit_compile!r} cannot work under {name} "
                "on CPU workers: XLA on CPU has no collective ops for the "
                "cross-worker all-reduce. Fix: compile(..., "
                "jit_compile=False) (or 'auto', which is False under "
                "tf.distribute)."
            )
    steps = getattr(model, "steps_per_execution", 1) or 1
    replicas = strategy.num_replicas_in_sync
    if steps > 1 and replicas > 1 and uses_collective_all_reduce(strategy):
        # keras-team/keras#19246: the multi-step tf.while_loop cannot run
        # collective all-reduce ("You must feed a value for placeholder").
        raise ValueError(
            f"steps_per_execution={steps} cannot work under {name} with "
            f"collective all-reduce over {replicas} replicas "
            f"({ISSUE_STEPS}). Fix: steps_per_execution=1, or on one "
            "machine tf.distribute.MirroredStrategy(cross_device_ops="
            "tf.distribute.ReductionToOneDevice())."
        )


def _first_local(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _logs_as_vectors(step_function):
    """`step_function` whose scalar outputs have shape [1] (tf#72388)."""

    @functools.wraps(step_function)
    def step(data):
        outputs = step_function(data)

        def vector(value):
            value = tf.convert_to_tensor(value)
            if value.shape.rank == 0:
                return tf.reshape(value, [1])
            return value

        return tf.nest.map_structure(vector, outputs)

    return step


class MultiWorkerFix:
    """Mixin: `fit`/`evaluate`/`predict` under MultiWorkerMirroredStrategy.

    Put it first in the bases of a model class (`class M(MultiWorkerFix,
    keras.Model)`); it derives from no model class, so it combines with any
    `keras.Model` subclass, including `keras_sam.SAMModel`. Outside a
    multi-worker MWMS, and once Keras is fixed (`keras_bugs()`), it changes
    nothing but the settings check (`check_distribution_settings`, run
    when `fit`/`evaluate`/`predict` make their function; `compile` is not
    overridden, since Keras does not recompile a model with a custom
    `compile` when it loads a `.keras` file). Off the TensorFlow backend it
    changes nothing at all: each override hands its arguments, as given, to
    Keras' own method (the JAX trainer's `_make_function` takes
    `concatenate_outputs`, for `predict`; the PyTorch trainer calls
    neither method).
    """

    def _maybe_symbolic_build(self, *args, **kwargs):
        if not _on_tensorflow():
            return super()._maybe_symbolic_build(*args, **kwargs)
        return self._multi_worker_symbolic_build(*args, **kwargs)

    def _multi_worker_symbolic_build(self, iterator=None, data_batch=None):
        """`TensorFlowTrainer._maybe_symbolic_build`, fixed under MWMS."""
        strategy = _keras.distribute_strategy(self)
        if (
            iterator is None
            or not is_multi_worker(strategy)
            or not keras_bugs()["build"]
        ):
            return super()._maybe_symbolic_build(
                iterator=iterator, data_batch=data_batch
            )
        # keras-team/keras#20585: Keras reduces the per-replica batch with
        # strategy.reduce, which fails under MWMS. Any replica's batch has
        # the shapes the build needs: take the first local one.
        batch = None
        for _, _, batches in iterator:
            batch = next(batches)
            break
        batch = tf.nest.map_structure(
            functools.partial(_first_local, strategy), batch
        )
        return super()._maybe_symbolic_build(data_batch=batch)

    def _make_function(self, step_function, *args, **kwargs):
        if not _on_tensorflow():
            return super()._make_function(step_function, *args, **kwargs)
        check_distribution_settings(self)
        strategy = self.distribute_strategy
        if is_multi_worker(strategy) and keras_bugs()["scalar_logs"]:
            # tensorflow/tensorflow#72388: strategy.reduce("MEAN", x,
            # axis=0) needs rank >= 1; logs of shape [1] reduce to scalars.
            step_function = _logs_as_vectors(step_function)
        return super()._make_function(step_function, *args, **kwargs)


def enable_multi_worker_fit(model):
    """Gives one existing model `MultiWorkerFix`, keeping its class name.

    The model's class becomes a subclass `(MultiWorkerFix, type(model))`
    with the same name and module, so `get_config`, saving and loading
    see the original class. Nothing else changes; Keras is not patched.

    Args:
        model: A `keras.Model` (functional, Sequential or subclassed).

    Returns:
        `model` itself.
    """
    cls = type(model)
    if isinstance(model, MultiWorkerFix):
        return model
    if not isinstance(model, keras.Model):
        raise ValueError(
            "enable_multi_worker_fit needs a keras.Model. Received: "
            f"model={model!r} of type {cls.__name__}"
        )
    fixed = type(
        cls.__name__,
        (MultiWorkerFix, cls),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )
    model.__class__ = fixed
    if getattr(model, "compiled", False):
        check_distribution_settings(model)
    return model


def local_tf_configs(num_workers):
    """`TF_CONFIG` values of a cluster of `num_workers` on localhost.

    The ports were free a moment ago (bound, read and released).

    Args:
        num_workers: Positive integer.

    Returns:
        A list of JSON strings, the `TF_CONFIG` of worker 0, 1, ...
    """
    sockets = []
    try:
        for _ in range(num_workers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("localhost", 0))
            sockets.append(sock)
        ports = [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    workers = [f"localhost:{port}" for port in ports]
    return [
        json.dumps({
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
        })
        for index in range(num_workers)
    ]
