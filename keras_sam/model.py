"""`SAMModel`: a `keras.Model` whose `train_step` is Sharpness-Aware Minimization.

Per step, on each replica (Foret et al. 2021, Algorithm 1):

    g      = grad L_B(w)                      # the compiled loss + regularisers
    eps    = rho * g / ||g||                  # eq. 2 (any p-norm, see `p`)
    g_sam  = grad L_B(w)|_(w + eps)           # eq. 3, eps held constant
    w      = optimizer.apply(g_sam, w)        # any Keras optimizer

Both passes evaluate the model functionally with `stateless_call`, so the
variables are never assigned to w + eps and never need restoring: a step that
fails leaves the weights untouched, and the step runs in the replica context of
every `tf.distribute` strategy. Under a strategy each replica perturbs with its
own local gradient (m-sharpness, section 4.1) and only `g_sam` is averaged
across replicas, by the optimizer.
"""

import math

import keras
import tensorflow as tf
from keras.src.losses import loss as loss_module
from keras.src.models.functional import Functional

from keras_sam import perturbation
from keras_sam import sharding


def check_rho(rho) -> float:
    """Validates the neighbourhood size `rho` and returns it as a float."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise ValueError(
            f"`rho` must be a non-negative number. Received: rho={rho!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            "`rho` must be a finite number >= 0 (0 gives the base "
            f"optimizer; Foret et al. use 0.01-0.5). Received: rho={rho!r}"
        )
    return value


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(keras.Model):
    """A Keras model trained with Sharpness-Aware Minimization.

    Use it wherever you would use `keras.Model`: with the functional API,
    as the base class of your own model, or around an existing model with
    `SAMModel.from_model`. `compile` and `fit` work as usual, with any
    Keras optimizer as the base optimizer.

    Args:
        *args: Passed to `keras.Model` (e.g. `inputs, outputs`).
        rho: Float >= 0, the radius of the perturbation ball. Stored in the
            non-trainable variable `model.rho`, which callbacks may assign
            between steps without retracing, and which is saved with the
            model. 0 reproduces the base optimizer. Defaults to 0.05.
        m: Integer or None, examples per perturbation group. None (default)
            perturbs with the gradient of each replica's whole batch; a
            smaller `m` splits each replica's batch into groups of `m`
            examples with one perturbation each, and descends along the mean
            of the groups' SAM gradients. `m=1` is per-example "1-SAM". The
            groups are vectorised (`tf.vectorized_map`), not a Python loop.
            The per-replica batch must be divisible by `m` (batch with
            `drop_remainder=True`), and `m=1` refuses BatchNormalization.
        p: Float > 1 or `float("inf")`, the norm of the perturbation ball
            (eq. 2). 2 (default) gives eps = rho g / ||g||_2; inf gives
            eps = rho sign(g).
        **kwargs: Passed to `keras.Model`.

    The loss and metrics reported by `fit` are measured at w, in the first
    of the two passes, like a plain Keras model's. The step also reports
    `grad_norm`, the norm of the ascent gradient, and `sharpness`, the
    estimate L(w + eps) - L(w) from the same two passes (means over groups
    and replicas). BatchNormalization moving statistics are updated by the
    pass at w only. Dropout draws the same mask in both passes (the random
    state is the same for both), so eps is evaluated on the same subnetwork.

    Example:

    >>> import keras, keras_sam, numpy as np
    >>> inputs = keras.Input((4,))
    >>> outputs = keras.layers.Dense(3)(inputs)
    >>> model = keras_sam.SAMModel(inputs, outputs, rho=0.05)
    >>> model.compile(optimizer="sgd", loss=keras.losses.
    ...     SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.ones((8, 4)), np.zeros((8,))
    >>> history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)

    For static shapes (XLA, TPUs, or `m` with a dataset whose size is not a
    multiple of the batch), batch with `drop_remainder=True`.

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021: Algorithm 1, equations 2-3,
        section 4.1 (m-sharpness). Andriushchenko and Flammarion, "Towards
        Understanding Sharpness-Aware Minimization", ICML 2022 (1-SAM).
    """

    def __new__(cls, *args, **kwargs):
        # `SAMModel(inputs, outputs)` builds a functional SAMModel, the way
        # `keras.Model(inputs, outputs)` builds a `Functional`. Keras would
        # otherwise rewrite SAMModel's base classes in place, which breaks
        # every later subclass of SAMModel.
        if cls is SAMModel and _is_functional_call(args, kwargs):
            cls = FunctionalSAMModel
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, rho=0.05, m=None, p=2.0, **kwargs):
        rho = check_rho(rho)
        m = sharding.check_m(m)
        p = perturbation.check_p(p)
        super().__init__(*args, **kwargs)
        self.m = m
        self.p = p
        self._initial_rho = rho
        self.rho = keras.Variable(
            rho, dtype="float32", trainable=False, name="rho"
        )
        self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")
        self.sharpness_tracker = keras.metrics.Mean(name="sharpness")

    @classmethod
    def from_model(cls, model, input_shape=None, **sam_kwargs):
        """Wraps an existing Keras model, sharing its layers and weights.

        Args:
            model: A `keras.Model`. Functional and `Sequential` models with
                known inputs are wrapped as they are; any other model
                (e.g. subclassed) is called on `keras.Input(input_shape)`.
            input_shape: Tuple, the shape of one example, needed only when
                `model` has no `inputs`.
            **sam_kwargs: `rho`, `m`, `p` and other `SAMModel` arguments.

        Returns:
            A `SAMModel` whose layers are `model`'s (no copy, no re-init).

        >>> import keras, keras_sam
        >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> sam = keras_sam.SAMModel.from_model(base, rho=0.1)
        >>> sam.layers[-1] is base.layers[-1]
        True
        """
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError):
            inputs = outputs = None
        if not inputs:
            if input_shape is None:
                raise ValueError(
                    f"Model {model.name!r} has no defined inputs: pass "
                    "`input_shape=` (the shape of one example), or subclass "
                    "`keras_sam.SAMModel` instead of `keras.Model`."
                )
            inputs = keras.Input(shape=tuple(input_shape))
            outputs = model(inputs)
        return cls(inputs=inputs, outputs=outputs, name=model.name, **sam_kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self._initial_rho, "m": self.m, "p": self.p})
        return config

    # ------------------------------------------------------------------ step

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        trainable = [v.value for v in self.trainable_variables]
        non_trainable = [v.value for v in self.non_trainable_variables]
        batch = {"x": x, "y": y, "sample_weight": sample_weight}
        batch = {k: v for k, v in batch.items() if v is not None}

        group_size = self._group_size(batch)
        if group_size is None:
            result = self._sam_gradients(trainable, non_trainable, batch)
        else:
            result = self._grouped_sam_gradients(
                trainable, non_trainable, batch, group_size
            )
        grads, y_pred, new_non_trainable, stats = result

        self.optimizer.apply(grads, self.trainable_variables)
        for variable, old, new in zip(
            self.non_trainable_variables, non_trainable, new_non_trainable
        ):
            if new is not old:
                variable.assign(new)

        self._loss_tracker.update_state(
            stats["loss"], sample_weight=sharding.batch_size(x)
        )
        self.grad_norm_tracker.update_state(stats["grad_norm"])
        self.sharpness_tracker.update_state(stats["loss_perturbed"] - stats["loss"])
        if self._compile_loss is not None and self._compile_loss.metrics:
            # Per-output loss trackers of multi-output models (losses are
            # computed statelessly above, so they are updated here, at w).
            self._compile_loss(y, y_pred, sample_weight)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _group_size(self, batch):
        """The `m` to split by, or None when the whole batch is one group."""
        if self.m is None:
            return None
        if self.m == 1:
            for layer in self._flatten_layers(include_self=False):
                if isinstance(layer, keras.layers.BatchNormalization):
                    raise ValueError(
                        f"m=1 (1-SAM) gives BatchNormalization layer "
                        f"{layer.name!r} a batch of a single example. Use a "
                        "model with LayerNormalization or GroupNormalization "
                        "(as Baek et al. do), or m >= 2."
                    )
        if sharding.batch_size(batch) == self.m:
            return None
        return self.m

    def _loss(self, trainable, non_trainable, batch):
        """The compiled loss at `trainable`, without touching any variable.

        Returns the loss (scaled for distribution, as Keras does), the
        predictions and the non-trainable values after the forward pass.
        """
        kwargs = {"training": True} if self._call_has_training_arg else {}
        y_pred, non_trainable, losses = self.stateless_call(
            trainable, non_trainable, batch["x"], return_losses=True, **kwargs
        )
        # Make the forward pass's own losses (activity regularisers, add_loss)
        # visible to compute_loss, as Keras' JAX trainer does.
        self._losses_override = list(losses)
        loss, _ = self.stateless_compute_loss(
            trainable,
            non_trainable,
            [v.value for v in self.metrics_variables],
            x=batch["x"],
            y=batch.get("y"),
            y_pred=y_pred,
            sample_weight=batch.get("sample_weight"),
            training=True,
        )
        self._losses_override = []
        return loss, y_pred, non_trainable

    def _gradient(self, trainable, non_trainable, batch):
        """Loss, outputs, new non-trainables and float32 gradient at a point."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(trainable)
            loss, y_pred, new_non_trainable = self._loss(
                trainable, non_trainable, batch
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, trainable)
        grads = [
            tf.zeros_like(w) if g is None else g
            for g, w in zip(grads, trainable)
        ]
        return loss, y_pred, new_non_trainable, grads

    def _sam_gradients(self, trainable, non_trainable, batch):
        """Algorithm 1 on one group of examples (a replica's batch or m)."""
        loss, y_pred, new_non_trainable, grads = self._gradient(
            trainable, non_trainable, batch
        )
        eps = perturbation.dual_vector(grads, self.rho, self.p)
        perturbed = [
            w + tf.cast(e, w.dtype) for w, e in zip(trainable, eps)
        ]
        # Same non-trainable values as the first pass: the same dropout mask,
        # and the BatchNormalization statistics of this pass are discarded.
        loss_perturbed, _, _, sam_grads = self._gradient(
            perturbed, non_trainable, batch
        )
        stats = {
            "loss": loss_module.unscale_loss_for_distribution(loss),
            "loss_perturbed": loss_module.unscale_loss_for_distribution(
                loss_perturbed
            ),
            "grad_norm": self._unscaled_norm(grads),
        }
        return sam_grads, y_pred, new_non_trainable, stats

    def _grouped_sam_gradients(self, trainable, non_trainable, batch, m):
        """Algorithm 1 on each group of `m` examples (see `sharding.map_groups`)."""
        groups = sharding.split_into_groups(batch, m)
        changed = []  # indices of the non-trainables the forward pass updates

        def one_group(group):
            grads, y_pred, new_non_trainable, stats = self._sam_gradients(
                trainable, non_trainable, group
            )
            changed[:] = [
                i
                for i, (new, old) in enumerate(
                    zip(new_non_trainable, non_trainable)
                )
                if new is not old
            ]
            updates = [new_non_trainable[i] for i in changed]
            return grads, y_pred, updates, stats

        grads, y_pred, updates, stats = sharding.map_groups(one_group, groups)
        grads = [tf.reduce_mean(g, axis=0) for g in grads]
        merged = list(non_trainable)
        for i, new in zip(changed, updates):
            # BatchNormalization statistics: the mean over groups; integer
            # state such as a dropout seed is the same in every group.
            merged[i] = (
                tf.reduce_mean(new, axis=0) if new.dtype.is_floating else new[0]
            )
        stats = {k: tf.reduce_mean(v) for k, v in stats.items()}
        return grads, sharding.merge_groups(y_pred), merged, stats

    def _unscaled_norm(self, grads):
        """||g|| of the true local gradient (undo loss and replica scaling)."""
        norm = perturbation.global_norm(grads)
        scale = getattr(self.optimizer, "dynamic_scale", None)
        if scale is not None:
            norm = norm / tf.cast(scale, tf.float32)
        return loss_module.unscale_loss_for_distribution(norm)


def _is_functional_call(args, kwargs) -> bool:
    """Whether constructor arguments are those of a functional model."""
    return (
        len(args) == 2
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


@keras.saving.register_keras_serializable(package="keras_sam", name="SAMModel")
class FunctionalSAMModel(SAMModel, Functional):
    """A `SAMModel` built from `inputs` and `outputs` (the functional API).

    Not constructed directly: `SAMModel(inputs, outputs, ...)` returns one.
    It is saved and loaded under the name "SAMModel".
    """
