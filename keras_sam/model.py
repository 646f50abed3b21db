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

import dataclasses
import difflib
import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses import loss as loss_module
from keras.src.models.functional import Functional
from keras.src.saving import object_registration

from keras_sam import perturbation
from keras_sam import sharding
from keras_sam.options import SAMOptions


def check_rho(rho) -> float:
    """Validates the neighbourhood size `rho` and returns it as a float."""
    if isinstance(rho, (bool, np.bool_)):
        raise ValueError(
            "`rho` must be a number >= 0, not a boolean (e.g. rho=0.05). "
            f"Received: rho={rho!r}"
        )
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
        m, p, perturbation, adaptive, eta, ascent_steps, second_order,
            gradient_rule, perturbed_fraction, mask, mask_update_every,
            sam_every, seed: the variant of the step, see
            `keras_sam.options.SAMOptions`. The defaults are Algorithm 1:
            `m=None` perturbs with the gradient of each replica's whole
            batch; `m` splits each replica's batch into groups of `m`
            examples with one eps each and descends along the mean of the
            groups' SAM gradients (`m=1` is per-example 1-SAM), mapped by
            `sharding.map_groups` (vectorised for dense models, unrolled for
            convolutional models with few enough groups). The per-replica batch must be divisible by `m`
            (batch with `drop_remainder=True`), and `m=1` refuses
            BatchNormalization. `p` is the norm of the ball (eq. 2). A random
            perturbation is drawn once per step and replica (shared by its
            groups).
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
        # `SAMModel(inputs, outputs)` (or a subclass called that way) builds
        # a functional SAMModel, the way `keras.Model(inputs, outputs)` builds
        # a `Functional`. Keras would otherwise rewrite the base classes of
        # SAMModel in place, which breaks every later subclass of SAMModel.
        if _is_functional_call(args, kwargs) and not issubclass(cls, Functional):
            cls = _functional_variant(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, rho=0.05, **kwargs):
        names = {field.name for field in dataclasses.fields(SAMOptions)}
        options = SAMOptions(
            **{key: kwargs.pop(key) for key in list(kwargs) if key in names}
        )
        rho = check_rho(rho)
        if _is_functional_call(args, kwargs) or isinstance(self, Functional):
            _check_functional_kwargs(kwargs, names)
        super().__init__(*args, **kwargs)
        self.sam_options = options
        self._initial_rho = rho
        self.rho = keras.Variable(
            rho, dtype="float32", trainable=False, name="rho"
        )
        self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")
        self.sharpness_tracker = keras.metrics.Mean(name="sharpness")

    @property
    def m(self):
        """Examples per perturbation group (None: each replica's batch)."""
        return self.sam_options.m

    @property
    def p(self):
        """The norm of the perturbation ball."""
        return self.sam_options.p

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
        config.update({"rho": self._initial_rho, **self.sam_options.get_config()})
        return config

    # ------------------------------------------------------------------ step

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        trainable = [v.value for v in self.trainable_variables]
        non_trainable = [v.value for v in self.non_trainable_variables]
        batch = {"x": x, "y": y, "sample_weight": sample_weight}
        batch = {k: v for k, v in batch.items() if v is not None}

        def sam_step():
            return self._replica_gradients(trainable, non_trainable, batch)

        def base_step():  # one pass at w: the base optimizer's gradient
            first = self._evaluate(trainable, non_trainable, batch)
            stats = self._stats(first, first, sam_weight=0.0)
            return first.grads, first.y_pred, first.updates, stats

        every = self.sam_options.sam_every
        if every == 1:
            grads, y_pred, updates, stats = sam_step()
        else:
            is_sam_step = tf.equal(self.optimizer.iterations % every, 0)
            grads, y_pred, updates, stats = tf.cond(
                is_sam_step, sam_step, base_step
            )

        self.optimizer.apply(grads, self.trainable_variables)
        for i, value in updates.items():
            self.non_trainable_variables[i].assign(value)
        self._loss_tracker.update_state(
            stats["loss"], sample_weight=sharding.batch_size(x)
        )
        # A step whose gradient overflowed (skipped by a LossScaleOptimizer)
        # has no meaningful norm or sharpness: leave it out of the means.
        finite = tf.math.is_finite(stats["grad_norm"])
        weight = tf.cast(finite, tf.float32)
        sharpness = stats["loss_perturbed"] - stats["loss"]
        self.grad_norm_tracker.update_state(
            tf.where(finite, stats["grad_norm"], 0.0), sample_weight=weight
        )
        self.sharpness_tracker.update_state(
            tf.where(finite, sharpness, 0.0),
            sample_weight=weight * stats["sam_weight"],
        )
        if self._compile_loss is not None and self._compile_loss.metrics:
            # Per-output loss trackers of multi-output models (losses are
            # computed statelessly above, so they are updated here, at w).
            self._compile_loss(y, y_pred, sample_weight)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _replica_gradients(self, trainable, non_trainable, batch):
        """The SAM step on this replica's batch, whole or in groups of m."""
        self._check_logit_loss()
        m = self._group_size(batch)
        if m is None:
            return self._sam_gradients(trainable, non_trainable, batch)
        groups = sharding.split_into_groups(batch, m)
        grads, y_pred, updates, stats = sharding.map_groups(
            lambda group: self._sam_gradients(trainable, non_trainable, group),
            groups,
        )
        # BatchNormalization statistics: the mean over groups; integer state
        # such as a dropout seed is the same in every group.
        updates = {
            i: tf.reduce_mean(v, axis=0) if v.dtype.is_floating else v[0]
            for i, v in updates.items()
        }
        grads = [tf.reduce_mean(g, axis=0) for g in grads]
        stats = {k: tf.reduce_mean(v) for k, v in stats.items()}
        return grads, sharding.merge_groups(y_pred), updates, stats

    def _check_logit_loss(self):
        """L-SAM and J-SAM split gradients at the logits: they need them."""
        rule = self.sam_options.gradient_rule
        config = getattr(self.loss, "get_config", dict)()
        if rule != "sam" and not config.get("from_logits", False):
            raise ValueError(
                f"gradient_rule={rule!r} splits each gradient into "
                "dloss/dlogits and dlogits/dw, so the model must output "
                "logits and the loss must take them: compile with e.g. "
                "keras.losses.SparseCategoricalCrossentropy("
                f"from_logits=True). Received: loss={self.loss!r}"
            )

    def _group_size(self, batch):
        """The `m` to split by, or None when the whole batch is one group."""
        m = self.sam_options.m
        if m is None:
            return None
        if m == 1:
            for layer in self._flatten_layers(include_self=False):
                if isinstance(layer, keras.layers.BatchNormalization):
                    raise ValueError(
                        f"m=1 (1-SAM) gives BatchNormalization layer "
                        f"{layer.name!r} a batch of a single example. Use a "
                        "model with LayerNormalization or GroupNormalization "
                        "(as Baek et al. do), or m >= 2."
                    )
        if sharding.batch_size(batch) == m:
            return None
        return m

    def _sam_gradients(self, trainable, non_trainable, batch):
        """One group's descent gradient: Algorithm 1 and its variants."""
        options = self.sam_options
        if options.second_order:
            return self._second_order_gradients(trainable, non_trainable, batch)
        both_factors = options.gradient_rule != "sam"
        first = self._evaluate(trainable, non_trainable, batch, both_factors)
        eps = self._perturbation(trainable, non_trainable, batch, first.grads)
        perturbed = [w + tf.cast(e, w.dtype) for w, e in zip(trainable, eps)]
        # Same non-trainable values as the first pass: the same dropout mask,
        # and the BatchNormalization statistics of this pass are discarded.
        second = self._evaluate(perturbed, non_trainable, batch, both_factors)
        if options.gradient_rule == "sam":
            grads = second.grads
        elif options.gradient_rule == "jacobian":  # df/dw at w + eps
            grads = second.vector_jacobian_product(first.output_grads)
        else:  # "logit": dl/df at w + eps, df/dw at w
            grads = first.vector_jacobian_product(second.output_grads)
        return grads, first.y_pred, first.updates, self._stats(first, second)

    def _second_order_gradients(self, trainable, non_trainable, batch):
        """d/dw L(w + eps(w)), through eps (Foret et al. appendix C.4)."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(trainable)
            first = self._evaluate(trainable, non_trainable, batch)
            eps = perturbation.dual_vector(
                first.grads, self.rho, self.sam_options.p
            )
            perturbed = [
                w + tf.cast(e, w.dtype) for w, e in zip(trainable, eps)
            ]
            loss, _, _, _ = self._loss(perturbed, non_trainable, batch)
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = _zeros_for_none(tape.gradient(scaled_loss, trainable), trainable)
        second = _Evaluation(loss, None, {}, grads, None, None)
        return grads, first.y_pred, first.updates, self._stats(first, second)

    def _perturbation(self, trainable, non_trainable, batch, grads):
        """eps: random, or by (projected) gradient ascent in the chosen ball.

        The ascent runs in coordinates u with eps = T u, where T is ASAM's
        |w| + eta (1 without `adaptive`), times the Sparse SAM mask.
        """
        options = self.sam_options
        if options.perturbation == "random":
            z = perturbation.random_directions(
                [w.shape for w in trainable], self._step_seed()
            )
            return perturbation.dual_vector(z, self.rho, 2.0)
        scale = [tf.ones(w.shape, tf.float32) for w in trainable]
        if options.adaptive:
            scale = perturbation.adaptive_scale(trainable, options.eta)
        if options.perturbed_fraction < 1.0:
            mask = self._mask(grads)
            scale = [t * k for t, k in zip(scale, mask)]

        def ascent_direction(g):
            scaled = [tf.cast(gi, tf.float32) * t for gi, t in zip(g, scale)]
            return perturbation.dual_vector(scaled, self.rho, options.p)

        u = ascent_direction(grads)
        for _ in range(options.ascent_steps - 1):
            point = [
                w + tf.cast(ui * t, w.dtype)
                for w, ui, t in zip(trainable, u, scale)
            ]
            g = self._evaluate(point, non_trainable, batch).grads
            step = ascent_direction(g)
            u = perturbation.project(
                [a + b for a, b in zip(u, step)], self.rho, options.p
            )
        return [ui * t for ui, t in zip(u, scale)]

    def _mask(self, grads):
        """Sparse SAM's 0/1 mask over all weights."""
        options = self.sam_options
        if options.mask == "fisher":
            scores = [tf.square(tf.cast(g, tf.float32)) for g in grads]
        else:
            period = self.optimizer.iterations // options.mask_update_every
            seed = tf.stack([options.seed, tf.cast(period, tf.int32)])
            scores = perturbation.random_directions([g.shape for g in grads], seed)
        return perturbation.top_fraction_mask(scores, options.perturbed_fraction)

    def _step_seed(self):
        """A stateless seed for this step and replica."""
        seed = tf.stack(
            [
                self.sam_options.seed,
                tf.cast(self.optimizer.iterations, tf.int32),
            ]
        )
        replica = tf.distribute.get_replica_context()
        if replica is not None:
            seed = tf.random.experimental.stateless_fold_in(
                seed, replica.replica_id_in_sync_group
            )
        return seed

    def _loss(self, trainable, non_trainable, batch):
        """The compiled loss at `trainable`, without touching any variable.

        Returns the loss (scaled for distribution, as Keras does), the
        predictions, the non-trainable values after the forward pass, and
        the part of the loss added by the model itself (regularisers).
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
        own_losses = [self._aggregate_additional_loss(l) for l in losses]
        return loss, y_pred, non_trainable, own_losses

    def _evaluate(self, trainable, non_trainable, batch, output_grads=False):
        """Loss, outputs and gradient at one point, as an `_Evaluation`."""
        with tf.GradientTape(
            watch_accessed_variables=False, persistent=output_grads
        ) as tape:
            tape.watch(trainable)
            loss, y_pred, new_non_trainable, own_losses = self._loss(
                trainable, non_trainable, batch
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        if output_grads:
            tape.watch(y_pred)
            outputs = tf.nest.flatten(y_pred)
            grads = tape.gradient(scaled_loss, [trainable, outputs])
            grads, outputs_grads = grads
        else:
            grads, outputs_grads = tape.gradient(scaled_loss, trainable), None
        grads = _zeros_for_none(grads, trainable)
        updates = {
            i: new
            for i, (new, old) in enumerate(zip(new_non_trainable, non_trainable))
            if new is not old
        }

        def vector_jacobian_product(cotangents):
            """grad of <cotangents, f> + the model's own losses, here."""
            with tape:
                surrogate = tf.add_n(
                    [
                        tf.reduce_sum(tf.stop_gradient(c) * tf.cast(o, c.dtype))
                        for c, o in zip(cotangents, outputs)
                    ]
                    + [self.optimizer.scale_loss(l) for l in own_losses]
                )
            return _zeros_for_none(tape.gradient(surrogate, trainable), trainable)

        return _Evaluation(
            loss, y_pred, updates, grads, outputs_grads, vector_jacobian_product
        )

    def _stats(self, first, second, sam_weight=1.0):
        return {
            "loss": loss_module.unscale_loss_for_distribution(first.loss),
            "loss_perturbed": loss_module.unscale_loss_for_distribution(
                second.loss
            ),
            "grad_norm": self._unscaled_norm(first.grads),
            "sam_weight": tf.constant(sam_weight, tf.float32),
        }

    def _unscaled_norm(self, grads):
        """||g|| of the true local gradient (undo loss and replica scaling)."""
        norm = perturbation.global_norm(grads)
        scale = getattr(self.optimizer, "dynamic_scale", None)
        if scale is not None:
            norm = norm / tf.cast(scale, tf.float32)
        return loss_module.unscale_loss_for_distribution(norm)


class _Evaluation(NamedTuple):
    """What one pass at a point gives: see `SAMModel._evaluate`."""

    loss: tf.Tensor
    y_pred: object
    updates: dict  # index -> new value of the non-trainables it changed
    grads: list
    output_grads: object  # dl/d(outputs), only when asked for
    vector_jacobian_product: object


def _zeros_for_none(grads, weights) -> list:
    """Zeros for weights the loss does not depend on (gradient None)."""
    return [tf.zeros_like(w) if g is None else g for g, w in zip(grads, weights)]


_FUNCTIONAL_KWARGS = {"inputs", "outputs", "name", "trainable"}


def _check_functional_kwargs(kwargs, sam_names):
    """Refuses keyword arguments that Keras' Functional would drop."""
    unknown = sorted(set(kwargs) - _FUNCTIONAL_KWARGS)
    if unknown:
        known = sorted(sam_names | {"rho"} | _FUNCTIONAL_KWARGS)
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)
            for key in unknown
            for close in [difflib.get_close_matches(key, known, n=1)]
        ]
        raise ValueError(
            f"Unknown SAMModel argument(s): {', '.join(hints)}. SAMModel "
            f"takes {', '.join(known)}. Received: "
            + ", ".join(f"{key}={kwargs[key]!r}" for key in unknown)
        )


def _is_functional_call(args, kwargs) -> bool:
    """Whether constructor arguments are those of a functional model."""
    return (
        len(args) == 2
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


_FUNCTIONAL_VARIANTS = {}


def _functional_variant(cls):
    """`cls` with `Functional` mixed in, saved under `cls`'s name."""
    if cls is SAMModel:
        return FunctionalSAMModel
    if cls not in _FUNCTIONAL_VARIANTS:
        variant = type(
            cls.__name__,
            (cls, Functional),
            {"__module__": cls.__module__, "__doc__": cls.__doc__},
        )
        object_registration.GLOBAL_CUSTOM_NAMES[variant] = (
            keras.saving.get_registered_name(cls)
        )
        _FUNCTIONAL_VARIANTS[cls] = variant
    return _FUNCTIONAL_VARIANTS[cls]


@keras.saving.register_keras_serializable(package="keras_sam", name="SAMModel")
class FunctionalSAMModel(SAMModel, Functional):
    """A `SAMModel` built from `inputs` and `outputs` (the functional API).

    Not constructed directly: `SAMModel(inputs, outputs, ...)` returns one.
    It is saved and loaded under the name "SAMModel".
    """
