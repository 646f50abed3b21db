"""Every private Keras API keras_sam uses, in one place, with the reason.

Each item names why no public route exists. All are checked on the declared
range, Keras 3.14-3.15 (CI runs the oldest and the pinned one); the oldest
Keras each item exists in is noted. When Keras grows a public route, change
it here only.

Private *methods* that only a subclass can override stay in their
classes; `PRIVATE_OVERRIDES` lists them so that this file is the full
inventory (tests/test_private_api.py walks the package and fails on any
private Keras or TensorFlow use elsewhere):
- `TensorFlowTrainer._maybe_symbolic_build` and `_make_function`
  (`distribution.MultiWorkerFix`): the multi-worker `fit` bugs
  keras-team/keras#20585 and tensorflow/tensorflow#72388, and the settings
  checks that must run where the step function is made;
- `BackupAndRestore._save_model` and `_load_model`
  (`callbacks.ExactBackupAndRestore`): the random state and the batches
  already done must be saved and restored with the backup itself;
- `Function._run_through_graph` (`ClonedSettings` below): `clone_model`;
- `TensorFlowTrainer._maybe_symbolic_build` (`SAMModel`): builds a lazily
  built model, its compiled loss and metrics and its optimizer before its
  first step, which is then traced once (`symbolic_build` below).
TensorFlow's private distribution state is read here too
(`in_multi_worker_mode`, `uses_collective_ops`).
"""

import contextlib
import threading

import keras
from keras.src.losses import loss as _loss_module
from keras.src.models.functional import Functional  # noqa: F401
from keras.src.random import seed_generator as _seed_generator
from keras.src.saving import object_registration as _registration

# `keras.Model(inputs, outputs)` returns a `Functional`; keras exports no
# name for the class, and a functional SAMModel must derive from it (as
# `keras.Sequential` does) so that Keras saves and clones it as a graph.

PRIVATE_OVERRIDES = {
    "_maybe_symbolic_build": ("MultiWorkerFix", "SAMModel"),
    "_make_function": ("MultiWorkerFix",),
    "_save_model": ("ExactBackupAndRestore",),
    "_load_model": ("ExactBackupAndRestore",),
    "_run_through_graph": ("ClonedSettings",),
}


def call_has_training_arg(model) -> bool:
    """Whether `model.call` takes `training` (as Keras' trainers ask).

    `Layer._call_has_training_arg` is computed by Keras with rules for
    functional models (any layer taking `training`) that inspecting
    `model.call` alone would miss.
    """
    return model._call_has_training_arg


def compute_loss(model, x, y, y_pred, sample_weight):
    """`model.compute_loss(..., training=True)`, as Keras' trainers call it.

    `Trainer._compute_loss` drops `training` for user overrides of
    `compute_loss` written before Keras 3.3 without that argument.
    """
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )


def loss_tracker(model):
    """The `Mean` metric behind `logs["loss"]` (`Trainer._loss_tracker`).

    Keras updates it in its own `train_step`; a replacement step must do the
    same, and there is no public handle on it (it is `model.metrics[0]` only
    when compiled, and a user's `metrics` property may reorder).
    """
    return model._loss_tracker


def unscale_loss_for_distribution(value):
    """Undoes the 1/num_replicas scaling Keras applies to losses (TF only).

    `compute_loss` returns the loss divided by the number of replicas in
    sync so that summed gradients are means; logs report the unscaled loss.
    No public API (keras/src/losses/loss.py, since Keras 3.8).
    """
    return _loss_module.unscale_loss_for_distribution(value)


def unscale_gradient_norm(model, norm):
    """A gradient norm of the true local loss: undoes the optimizer's loss
    scale (mixed precision, public `dynamic_scale`) and Keras' 1/replicas
    loss scaling (`unscale_loss_for_distribution`)."""
    scale = getattr(model.optimizer, "dynamic_scale", None)
    if scale is not None:
        norm = norm / keras.ops.cast(scale, "float32")
    return unscale_loss_for_distribution(norm)


def in_stateless_scope() -> bool:
    """Whether code runs inside a `keras.StatelessScope` (no public
    accessor: `keras.src.backend.common.stateless_scope`)."""
    from keras.src.backend.common import stateless_scope

    return stateless_scope.in_stateless_scope()


def output_masks(outputs) -> list:
    """The Keras masks of a model's outputs, in `keras.tree.flatten`
    order (None where none), for `with_masks` to set again: a tensor
    returned from a `tf.function` loses its mask, which Keras' losses and
    metrics read (`get_keras_mask`/`set_keras_mask` of `keras.src.backend`
    are exported nowhere)."""
    from keras.src import backend

    return [backend.get_keras_mask(t) for t in keras.tree.flatten(outputs)]


def with_masks(outputs, masks: list):
    """`outputs`, their masks (from `output_masks`) set on them again."""
    from keras.src import backend

    for tensor, mask in zip(keras.tree.flatten(outputs), masks):
        if mask is not None:
            backend.set_keras_mask(tensor, mask)
    return outputs


def existing_global_seed_generator():
    """The `SeedGenerator` behind unseeded `keras.random` calls, or None.

    Its state advances at every unseeded draw, so SAM's step must commit it
    like the model's own state. Keras keeps it in a global attribute with no
    public accessor; this reads it without creating it. The attribute's
    name constant exists since Keras 3.13.
    """
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute(
        _seed_generator.GLOBAL_SEED_GENERATOR
    )


def register_as(cls, registered_name: str):
    """Saves objects of `cls` under another class's registered name.

    `keras.saving.register_keras_serializable` would also bind the name to
    `cls` for loading; SAM's generated classes (a SAM subclass of a user's
    model class) must serialise under "keras_sam>SAMModel" while that name
    keeps loading through `SAMModel.from_config`, which rebuilds them.
    """
    _registration.GLOBAL_CUSTOM_NAMES[cls] = registered_name


def flatten_layers(model):
    """Every layer inside `model`, recursively (`Layer._flatten_layers`).

    `model.layers` lists only direct children of functional models.
    """
    return model._flatten_layers(include_self=False, recursive=True)


def additional_loss(model, loss):
    """One `add_loss`/regulariser loss as `compute_loss` adds it.

    `Trainer._aggregate_additional_loss` sums it and, on TensorFlow, scales
    it for distribution (Keras >= 3.8); L-SAM/J-SAM need these losses apart
    from the compiled loss.
    """
    return model._aggregate_additional_loss(loss)


def graph_calls(model) -> list:
    """`(operation, keyword arguments)` of every call in a functional graph.

    A layer used twice appears twice. `Function._nodes_by_depth` is the only
    record of a functional graph's calls (`model.layers` lists each layer
    once, whatever its number of calls), and its nodes' `arguments` the
    only record of how each was called.
    """
    return [
        (node.operation, dict(node.arguments.kwargs))
        for nodes in model._nodes_by_depth.values()
        for node in nodes
        if node.operation is not None and not node.is_input
    ]


def run_graph(model, inputs, operation_fn):
    """A functional `model`'s outputs with `operation_fn(op)` run for `op`.

    `Functional.call` walks its graph with `Function._run_through_graph`;
    the per-example SAM step runs its own form of Dense and
    LayerNormalization layers in that walk, and there is no public hook.
    """
    outputs = model._run_through_graph(
        model._standardize_inputs(inputs), operation_fn=operation_fn
    )
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        return outputs[0]  # as `Functional.call` unpacks a singleton
    return outputs


@contextlib.contextmanager
def losses_overridden(model, losses):
    """`model.losses` reads `losses` inside the block (`_losses_override`).

    `stateless_call` returns the forward pass's own losses (activity
    regularisers, `add_loss`) apart; `compute_loss` reads `model.losses`.
    Keras' own JAX trainer hands them over the same way; no public route.
    """
    model._losses_override = list(losses)
    try:
        yield
    finally:
        model._losses_override = []


def layer_history(tensor):
    """The operation that produced a functional model's `KerasTensor`
    (`KerasTensor._keras_history`): the layer feeding another layer, which
    `model.get_layer` cannot find by position."""
    return tensor._keras_history.operation


def compile_arguments(model):
    """The arguments `model.compile` was called with, as passed, or None.

    `Trainer._compile_config` keeps them; the public
    `get_compile_config()` returns them serialised, which loses
    unregistered custom losses and metrics.
    """
    stored = getattr(getattr(model, "_compile_config", None), "config", None)
    return dict(stored) if isinstance(stored, dict) else None


def print_msg(message):
    """Prints like Keras' own callbacks (`io_utils.print_msg`): to the
    absl log when Keras is set to log, else to stdout."""
    from keras.src.utils import io_utils

    io_utils.print_msg(message)


def multi_worker_bug_sites():
    """The two functions of Keras' TensorFlow trainer whose source
    `distribution.keras_bugs` reads to tell whether keras-team/keras#20585
    and tensorflow/tensorflow#72388 are still there (None where gone)."""
    from keras.src.backend.tensorflow import trainer

    return {
        "build": getattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build",
                         None),
        "scalar_logs": getattr(trainer, "reduce_per_replica", None),
    }


# `keras.models.clone_model` rebuilds a functional model as
# `type(model)(new_inputs, new_outputs, name=...)`, so constructor settings
# such as rho and the SAM options are lost; an uncompiled model has no
# compile config to carry them either (keras/src/models/cloning.py,
# `_clone_functional_model`, Keras 3.0-3.15; no public hook). Just before,
# it runs the original's graph on `new_inputs` through the private
# `_run_through_graph(inputs, operation_fn=..., call_fn=...)`, the only
# caller passing both. `ClonedSettings` notes that call, and
# `clone_source(inputs)` tells the new model, built on exactly those
# input tensors, which model it copies.
_clone = threading.local()
_UNSET = object()


class ClonedSettings:
    """Mixin: lets a functional model's clone find its source model."""

    def _run_through_graph(self, inputs, operation_fn=_UNSET, call_fn=_UNSET):
        kwargs = {}
        if operation_fn is not _UNSET:
            kwargs["operation_fn"] = operation_fn
        if call_fn is not _UNSET:
            kwargs["call_fn"] = call_fn
        if len(kwargs) == 2:  # clone_model
            _clone.source = (inputs, self)
        return super()._run_through_graph(inputs, **kwargs)


def clone_source(inputs):
    """The model `clone_model` is copying onto `inputs`, once, or None."""
    source = getattr(_clone, "source", None)
    if source is None or source[0] is not inputs:
        return None
    _clone.source = None
    return source[1]


def in_multi_worker_mode(strategy) -> bool:
    """Whether a MultiWorkerMirroredStrategy spans more than one worker.

    `tf.distribute` has no public accessor (`cluster_resolver` tells the
    cluster spec, not whether the strategy was built for it).
    """
    return bool(strategy.extended._in_multi_worker_mode())


def symbolic_build(model, iterator=None, data_batch=None):
    """Builds what the first trace of a step would create: unbuilt layers
    and, for a batch with targets, the compiled loss and metrics and the
    optimizer (`Trainer._symbolic_build`), from the shapes of one batch,
    without running the model. Does nothing under a distribution
    strategy, where Keras builds them itself.

    Keras' TensorFlow trainer calls it only under a distribution strategy
    (`_distribute_strategy`); its JAX trainer always. Without it the first
    trace creates variables, and a `tf.function` that creates variables is
    traced twice (once to create them, once without): SAM's step, larger
    than Keras', would pay that second trace too. No public route builds a
    model whose input shape is known only from data (`model.build` needs
    the shape; a forward call would update its state). Keras 3.0+.
    """
    if distribute_strategy(model) is not None:
        return
    layers_built = all(layer.built for layer in flatten_layers(model))
    # What `Trainer._symbolic_build` checks, from the same (private)
    # attributes: with all of it built there is nothing to do, and no spec
    # to read.
    compiled = (getattr(model, "_compile_metrics", None),
                getattr(model, "_compile_loss", None), model.optimizer)
    if layers_built and all(c is None or c.built for c in compiled):
        return
    if data_batch is None:  # the shapes Keras' first trace would see
        data_batch = _element_spec(iterator)
    if layers_built and not (_has_targets(data_batch)
                             and _shaped(data_batch)):
        return
    model._symbolic_build(iterator=iterator, data_batch=data_batch)


def _has_targets(batch) -> bool:
    """Whether a batch (or its spec) holds `y` (fit, evaluate), not only
    `x` (predict)."""
    if not isinstance(batch, (tuple, list)):
        return False
    return keras.utils.unpack_x_y_sample_weight(tuple(batch))[1] is not None


def _shaped(batch) -> bool:
    """Whether every part of a batch (or its spec) has a shape and dtype
    (not an optional input's `NoneTensorSpec` or `OptionalSpec`), as
    `Trainer._symbolic_build` needs."""
    return all(
        part is None or (hasattr(part, "shape") and hasattr(part, "dtype"))
        for part in keras.tree.flatten(batch)
    )


def _element_spec(iterator):
    """The batch structure a Keras `EpochIterator` will yield, or None.

    Building from a batch pulled from a new iterator would consume one: a
    `tf.data` dataset reshuffles per iterator, so every epoch would see the
    order of the next. The dataset Keras' `TFEpochIterator` made in its
    constructor (`_distributed_dataset`, no public accessor) knows the spec
    without reading; its data adapter (`EpochIterator.data_adapter`) would
    make another (for arrays, a copy of them all in a tf.Tensor).
    """
    dataset = getattr(iterator, "_distributed_dataset", None)
    if dataset is not None:
        return dataset.element_spec
    adapter = getattr(iterator, "data_adapter", None)
    if adapter is None:
        return None
    return adapter.get_tf_dataset().element_spec


def strategy_scope(model):
    """The scope of the tf.distribute strategy a model was created under
    (public `model.distribute_strategy`, TensorFlow's trainer only); a
    no-op context on the other backends."""
    strategy = getattr(model, "distribute_strategy", None)
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def distribute_strategy(model):
    """The strategy a model was created under, or None without one
    (`Trainer._distribute_strategy`; the public `model.distribute_strategy`
    falls back to the default strategy, which hides the difference)."""
    return getattr(model, "_distribute_strategy", None)


def uses_collective_ops(strategy) -> bool:
    """Whether a MirroredStrategy all-reduces with collective ops (its
    `cross_device_ops`, which `tf.distribute` keeps private)."""
    from tensorflow.python.distribute import cross_device_ops

    ops = getattr(strategy.extended, "_cross_device_ops", None)
    return isinstance(ops, cross_device_ops.CollectiveAllReduce)


def optimizer_momentums(optimizer) -> list:
    """The first-moment slots of an Adam-like Keras optimizer
    (`_momentums`, private in Adam, AdamW, Nadam, ...); SGD's are public
    (`momentums`)."""
    if isinstance(optimizer, keras.optimizers.SGD):
        return list(getattr(optimizer, "momentums", None) or [])
    return list(getattr(optimizer, "_momentums", None) or [])


def overrides_loss_computation(model) -> bool:
    """Whether a model's class overrides `compute_loss` or the private
    `Trainer._compute_loss` that Keras' trainers call."""
    return any(
        getattr(type(model), name) is not getattr(keras.Model, name)
        for name in ("compute_loss", "_compute_loss")
    )


def backup_metadata_path(callback) -> str:
    """Where `BackupAndRestore` writes its epoch/batch record
    (`_training_metadata_path`; no public accessor)."""
    return callback._training_metadata_path


def unpickle_model(buffer):
    """A model from the `.keras` bytes Keras pickles it as.

    Keras pickles a model as `(cls._unpickle_model, (buffer,))`, a
    classmethod that pickle finds by its class's name; SAM's generated
    classes share their base's name, so SAM models pickle through this
    module-level function, which loads the same way.
    """
    return keras.Model._unpickle_model(buffer)
