"""`SAMModel`: a `keras.Model` whose `train_step` is Sharpness-Aware Minimization.

Per step, on each replica (Foret et al. 2021, Algorithm 1):

    g      = grad L_B(w)                      # the compiled loss + regularisers
    eps    = rho * g / ||g||                  # eq. 2 (any p-norm, see `p`)
    g_sam  = grad L_B(w)|_(w + eps)           # eq. 3, eps held constant
    w      = optimizer.apply(g_sam, w)        # any Keras optimizer

Both passes run the model inside a `keras.StatelessScope` (see
`keras_sam.core`), so the variables are never assigned w + eps and never need
restoring, both passes see the same random draws, and the first pass's state
updates (batch statistics, seeds, metrics) are committed as `keras.Model`
commits them. The step itself lives in `keras_sam.core`; this module is what a
SAMModel *is*: its construction, `rho`, its config, and SAM for any model. Under a strategy each replica perturbs with its
own local gradient (m-sharpness, section 4.1) and only `g_sam` is averaged
across replicas, by the optimizer.
"""

import dataclasses
import warnings

import keras

from keras_sam import _keras
from keras_sam import model_classes
from keras_sam import backend
from keras_sam.core.options import SAMOptions
from keras_sam.core.options import check_rho
from keras_sam.core.policy import StepState
from keras_sam.distribution import MultiWorkerFix
from keras_sam.distribution import check_distribution_settings
from keras_sam.model_classes import bases_kept
from keras_sam.model_classes import check_functional_kwargs
from keras_sam.model_classes import functional_variant
from keras_sam.model_classes import is_functional_call
from keras_sam.model_classes import resolve_class
from keras_sam.sam_state import SAMGradients
from keras_sam.sam_state import SAMState
from keras_sam.sam_state import warn_if_sam_unused

Functional = _keras.Functional


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(MultiWorkerFix, _keras.ClonedSettings, keras.Model):
    """A Keras model trained with Sharpness-Aware Minimization.

    Use it wherever you would use `keras.Model`: with the functional API,
    as the base class of your own model, or around an existing model with
    `SAMModel.from_model`. `compile` and `fit` work as usual, with any
    Keras optimizer as the base optimizer.

    Args:
        *args: Passed to `keras.Model` (e.g. `inputs, outputs`).
        rho: Float >= 0, the radius of the perturbation ball. Stored in the
            variable `model.rho` (not a weight of the model), which
            callbacks may assign between steps without retracing; its
            current value is saved in the config. 0 is exactly the base
            optimizer, at the cost of one pass. Defaults to 0.05.
        **options: The variant of the step (`m`, `p`, `perturbation`,
            `adaptive`, ...), see `keras_sam.core.options.SAMOptions`; the
            defaults are Algorithm 1. `m` splits each replica's batch into
            groups of `m` examples with one eps each (`m=1` is 1-SAM); a
            batch that is not a multiple of `m` is perturbed as one group.
        **kwargs: Passed to `keras.Model`.

    The loss and metrics reported by `fit` are measured at w, in the first
    of the two passes, exactly as a keras.Model reports them; the training
    logs also hold `rho`, `grad_norm` (the norm of the ascent gradient) and
    `sharpness` (L(w + eps) - L(w)). Both passes see the same random state
    (the same dropout masks), and only the pass at w updates the model's
    state (BatchNorm statistics, seed generators, metrics).

    Example:

    >>> import keras, keras_sam, numpy as np
    >>> inputs = keras.Input((4,))
    >>> outputs = keras.layers.Dense(3)(inputs)
    >>> model = keras_sam.SAMModel(inputs, outputs, rho=0.05)
    >>> model.compile(optimizer="sgd", loss=keras.losses.
    ...     SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.ones((8, 4)), np.zeros((8,))
    >>> history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['grad_norm', 'loss', 'rho', 'sharpness']

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
        if is_functional_call(args, kwargs) and not issubclass(cls, Functional):
            cls = functional_variant(cls, FunctionalSAMModel)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, rho=0.05, **kwargs):
        names = {field.name for field in dataclasses.fields(SAMOptions)}
        options = SAMOptions(
            **{key: kwargs.pop(key) for key in list(kwargs) if key in names}
        )
        rho = check_rho(rho)
        if args and isinstance(args[0], keras.Model):
            raise ValueError(
                f"SAMModel takes (inputs, outputs) or no positional "
                f"arguments, not a model ({type(args[0]).__name__} "
                f"{args[0].name!r}). To train an existing model with SAM, "
                "use `keras_sam.SAMModel.from_model(model, rho=...)`."
            )
        source = None
        if is_functional_call(args, kwargs):
            check_functional_kwargs(kwargs, names)
            source = _keras.clone_source(args[0] if args else kwargs["inputs"])
            if not isinstance(self, Functional):
                # A subclass whose own __init__ builds layers and calls
                # `super().__init__(inputs=..., outputs=...)` (KerasHub's
                # pattern): `__new__` saw no graph, so switch here.
                self.__class__ = functional_variant(
                    type(self), FunctionalSAMModel
                )
        with bases_kept(SAMModel):
            super().__init__(*args, **kwargs)
        self._sam = SAMState(rho, options)
        if isinstance(source, SAMModel):  # keras.models.clone_model(source)
            self._set_sam_config(source.get_sam_config())

    # ----------------------------------------------------------- SAM state

    @property
    def rho(self):
        """The radius of the perturbation: a non-trainable variable, outside
        `model.weights`; assign it between steps (no retracing)."""
        # On JAX, `fit` holds the variables' values in its own state until
        # the epoch ends; the trainer's public sync attaches them again.
        sync = getattr(self, "jax_state_sync", None)
        if sync is not None and not _keras.in_stateless_scope():
            sync()
        return self._sam.rho

    @rho.setter
    def rho(self, value):
        self._sam.rho.assign(check_rho(value))

    @property
    def sam_options(self) -> SAMOptions:
        """The variant of the step (everything but rho), a `SAMOptions`."""
        return self._sam.options

    @property
    def m(self):
        """Examples per perturbation group (None: each replica's batch)."""
        return self.sam_options.m

    @property
    def p(self):
        """The norm of the perturbation ball."""
        return self.sam_options.p

    def get_sam_config(self) -> dict:
        """rho (its current value) and every SAM option, as a dict."""
        # The Keras variable, not its `.value`: under a strategy scope that
        # is a MirroredVariable, which NumPy cannot convert.
        rho = float(keras.ops.convert_to_numpy(self._sam.rho))
        return {"rho": rho, **self.sam_options.get_config()}

    def _set_sam_config(self, config):
        """Applies `get_sam_config()`-style settings (rho and options)."""
        config = dict(config)
        rho = check_rho(config.pop("rho", self.get_sam_config()["rho"]))
        options = SAMOptions(**config)
        backend.check_options(options)
        self._sam.options = options
        self._sam.step_state = None
        self._sam.rho.assign(rho)
        self.train_function = None

    # ---------------------------------------------------------------- step

    def compute_sam_gradients(self, x, y=None, sample_weight=None):
        """SAM's descent gradients for a batch: both passes, one call.

        The SAM counterpart of the `GradientTape` block of a custom
        `train_step` (keras.io, "Customizing what happens in fit()"). It
        runs the pass at w (whose state updates it commits, as a plain
        forward pass would) and the pass at w + eps, and records SAM's
        statistics (`grad_norm`, `sharpness`) for the logs.

        Args:
            x, y, sample_weight: The batch, as `compute_loss` takes them.

        Returns:
            `SAMGradients(gradients, y_pred, loss)`: the gradients to apply
            to `self.trainable_variables` (loss-scaled as the optimizer
            expects), the predictions and the loss at w.

        Example:

        >>> import keras, keras_sam, numpy as np
        >>> class Net(keras_sam.SAMModel):
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.dense = keras.layers.Dense(1)
        ...     def call(self, x):
        ...         return self.dense(x)
        ...     def train_step(self, data):
        ...         x, y = data
        ...         grads, y_pred, loss = self.compute_sam_gradients(x, y)
        ...         self.optimizer.apply(grads, self.trainable_variables)
        ...         return {"loss": loss}
        >>> model = Net(rho=0.05)
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
        """
        self._sam.calls += 1
        step = backend.step_module()
        result, self._sam.local.deferred = step.sam_gradients(
            self, self.sam_options, self._sam.rho, x, y, sample_weight,
            step_state=self._sam.step_state,
        )
        self._sam.record(result.stats)
        return SAMGradients(result.grads, result.y_pred, result.loss)

    def make_train_function(self, force=False):
        # The policy's per-replica state (AE-SAM, LookSAM, a kept mask,
        # Momentum-SAM's optimizer slots) needs the built model and
        # optimizer, and must be created outside the traced step; a new
        # train function (after `compile`) starts it afresh.
        if force or self.train_function is None:
            self._sam.step_state = StepState(self, self.sam_options)
        # A user's own train_step (however it was defined) is checked: it
        # must call compute_sam_gradients, and gets SAM's logs if it does.
        # The step is written as Keras' TensorFlow trainer calls it,
        # `train_step(data)`; the backend turns it into its trainer's form
        # (JAX: `train_step(state, data) -> (logs, state)`).
        method = type(self).train_step
        checked = method
        if method is not SAMModel.train_step:
            checked = warn_if_sam_unused(method)
        bound = checked.__get__(self)
        step = backend.step_module().stateless_step(self, bound)
        if step is not bound or checked is not method:
            object.__setattr__(self, "train_step", step)
        # Keras compiles the whole step under `jit_compile=True`; the
        # TensorFlow step may compile its passes instead (read when Keras
        # makes the function, so the setting is only lent for that; the
        # settings check, which runs there too, sees the user's first).
        check_distribution_settings(self)
        jit_compile = self.jit_compile
        self.jit_compile = backend.step_module().whole_step_compiled(self)
        try:
            return super().make_train_function(force=force)
        finally:
            self.jit_compile = jit_compile

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TF trainer builds a lazily built model (a subclass, a
        # Sequential without `keras.Input`) symbolically only under a
        # distribution strategy; otherwise the forward call in the first
        # trace of its `train_step` builds it. SAM's step reads the weights
        # before its first pass, so it builds first, symbolically (no state
        # changes), as Keras does under strategies (see `_keras.py`); the
        # compiled metrics and optimizer too, so that no variable is created
        # in the step's first trace, which would make TensorFlow trace it
        # twice.
        _keras.symbolic_build(self, iterator, data_batch)
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    def apply_sam_gradients(self, gradients):
        """Applies SAM's gradients, and what the step deferred until then.

        The SAM counterpart of `self.optimizer.apply(grads,
        self.trainable_variables)` in a custom `train_step`: it applies the
        gradients of `compute_sam_gradients` with the optimizer, then the
        updates the step holds back until after the optimizer's all-reduce
        (the moving statistics of `sync_moving_statistics=True`).

        Args:
            gradients: The gradients `compute_sam_gradients` returned.
        """
        if self.trainable_weights:
            backend.step_module().apply_gradients(
                self.optimizer, gradients, self.trainable_variables)
        else:
            warnings.warn("The model does not have any trainable weights.")
        self._sam.apply_deferred()

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grads, y_pred, loss = self.compute_sam_gradients(x, y, sample_weight)
        first = next(i for i in keras.tree.flatten(x) if i is not None)
        _keras.loss_tracker(self).update_state(
            _keras.unscale_loss_for_distribution(loss),
            sample_weight=keras.ops.shape(first)[0],
        )
        self.apply_sam_gradients(grads)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return {**logs, **self.sam_logs(in_logs=True)}

    @property
    def metrics_variables(self):
        # Keras' JAX trainer passes variables into its jitted step as
        # state; SAM's own (rho, its trackers) travel with the metrics'.
        variables = super().metrics_variables
        if backend.name() == "jax":
            variables = variables + self._sam.variables
        return variables

    @property
    def sam_metrics(self) -> list:
        """The `Mean` trackers of `grad_norm` and `sharpness` (not in
        `model.metrics`, so `evaluate` is a keras.Model's)."""
        return [self._sam.grad_norm, self._sam.sharpness]

    def sam_logs(self, in_logs=False) -> dict:
        """SAM's training statistics for the logs: rho, grad_norm, sharpness.

        `grad_norm` is ||g|| of the ascent gradient and `sharpness` the
        estimate L(w + eps) - L(w), both means over the epoch's SAM steps.

        Args:
            in_logs: Bool, what the training logs get: `{}` when the model
                was made with `log_statistics=False`.
        """
        if in_logs and not self.sam_options.log_statistics:
            return {}
        return self._sam.logs()

    def reset_metrics(self):
        super().reset_metrics()
        self._sam.reset()

    # -------------------------------------------------------------- config

    def __reduce__(self):
        # Keras pickles a model as its `.keras` bytes and a classmethod of
        # its class, which pickle finds by name; the classes SAM generates
        # (functional variants, SAM subclasses of a model class) share
        # their base's name (see `_keras.unpickle_model`).
        _, arguments = super().__reduce__()
        return _keras.unpickle_model, arguments

    def get_config(self):
        config = super().get_config()
        config.update(self.get_sam_config())
        base = type(self).__dict__.get("_sam_base")
        if base is not None:
            config["sam_base_class"] = {
                "module": base.__module__,
                "class_name": base.__name__,
                "registered_name": keras.saving.get_registered_name(base),
            }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base = config.pop("sam_base_class", None)
        if base is not None:
            return sam_class(resolve_class(base, custom_objects)).from_config(
                config, custom_objects
            )
        names = {field.name for field in dataclasses.fields(SAMOptions)}
        sam = {k: config[k] for k in list(config) if k in names | {"rho"}}
        if custom_objects is None:
            model = super().from_config(config)
        else:
            model = super().from_config(config, custom_objects=custom_objects)
        model._set_sam_config(sam)
        return model

    def get_compile_config(self):
        # `keras.models.clone_model` rebuilds a functional model from its
        # inputs and outputs only, then compiles it from this config: carry
        # the SAM settings along, so that a compiled clone keeps them.
        # An uncompiled model's config stays Keras' empty dict: Keras'
        # loader compiles a model whenever the dict is not empty.
        config = super().get_compile_config()
        if config:
            config = {**config, "sam_config": self.get_sam_config()}
        return config

    def compile_from_config(self, config):
        config = dict(config)
        sam = config.pop("sam_config", None)
        optimizer = config.get("optimizer")
        if isinstance(optimizer, dict) and str(
                optimizer.get("module")).startswith("keras.src.backend."):
            # A file saved on PyTorch names the torch backend's own class
            # (module "keras.src.backend.torch.optimizers.torch_adam"),
            # which another backend cannot run (Keras 3.15; no upstream
            # issue found). The public name finds the current backend's.
            config["optimizer"] = {**optimizer, "module": "keras.optimizers"}
        super().compile_from_config(config)
        if sam is not None:
            self._set_sam_config(sam)

    # ---------------------------------------------------------- any model

    @classmethod
    def from_model(cls, model, input_shape=None, **sam_kwargs):
        """SAM for an existing Keras model, sharing its layers and weights.

        - A functional model, or a `Sequential` with known inputs (or
          given `input_shape`), gives a new functional `SAMModel` built on
          the same layers (no copy), with the same input and output
          structures and, if the model is compiled, compiled the same way
          (the same optimizer object, so its state carries over).
        - Any other model (a `keras.Model` subclass, a KerasHub task, a
          `Sequential` built lazily by its first batch, ...) is turned
          into a SAM model in place and returned: its class becomes a SAM
          subclass of its own class, so it keeps its methods
          (`generate()`, a preprocessor run in `fit`), its compile
          settings and its saving, with rho and the SAM options in its
          config.

        Args:
            model: A `keras.Model`.
            input_shape: Tuple, the shape of one example: builds a model
                that is not built yet (optional; `fit` builds it too).
            **sam_kwargs: `rho`, `m`, `p` and other `SAMModel` arguments.

        Returns:
            A model whose `train_step` is SAM's.

        >>> import keras, keras_sam
        >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> sam = keras_sam.SAMModel.from_model(base, rho=0.1)
        >>> sam.layers[-1] is base.layers[-1]
        True
        """
        if not isinstance(model, keras.Model):
            raise ValueError(
                "`model` must be a keras.Model (functional, Sequential or a "
                f"subclass). Received: model={model!r}"
            )
        if input_shape is not None and isinstance(model, keras.Sequential):
            if not _graph_inputs(model):  # build it, then share its graph
                model.build((None, *tuple(input_shape)))
        if type(model) is Functional or _graph_inputs(model):
            return _from_graph(cls, model, sam_kwargs)
        if isinstance(model, SAMModel):
            raise ValueError(
                f"Model {model.name!r} already trains with SAM; change its "
                "settings with `model.rho.assign(...)`, or rebuild it with "
                "the options you want."
            )
        rho = check_rho(sam_kwargs.pop("rho", 0.05))
        options = SAMOptions(**sam_kwargs)
        if input_shape is not None and not model.built:
            model(keras.Input(shape=tuple(input_shape)))
        model.__class__ = sam_class(type(model))
        with _keras.strategy_scope(model):
            model._sam = SAMState(rho, options)
        model.train_function = None
        return model


def sam_class(base):
    """The SAM subclass of a `keras.Model` class: `(SAMModel, base)`.

    It keeps `base`'s name and methods and saves under "keras_sam>SAMModel"
    with `base` named in its config, so a fresh process loads it.
    """
    return model_classes.sam_class(base, SAMModel)


def _graph_inputs(model) -> list:
    """A Sequential model's inputs once it has a graph, else []."""
    if not isinstance(model, keras.Sequential):
        return []
    try:
        return list(model.inputs or [])
    except (AttributeError, ValueError):
        return []


def _from_graph(cls, model, sam_kwargs):
    """A functional SAMModel on the layers of a functional/Sequential model.

    It keeps the structures of the model's inputs and outputs (a single
    tensor, a list, a dict: what `predict` returns and what a loss dict
    is keyed by), and, if the model is compiled, its compile settings with
    the same optimizer (and its state).
    """
    if isinstance(model, keras.Sequential):  # one input, one output
        inputs, outputs = model.inputs[0], model.outputs[0]
    else:
        inputs, outputs = model.input, model.output
    sam = cls(inputs=inputs, outputs=outputs, name=model.name, **sam_kwargs)
    arguments = _keras.compile_arguments(model) if model.compiled else None
    if arguments is not None:
        sam.compile(**{**arguments, "optimizer": model.optimizer})
    return sam


@keras.saving.register_keras_serializable(package="keras_sam", name="SAMModel")
class FunctionalSAMModel(SAMModel, Functional):
    """A `SAMModel` built from `inputs` and `outputs` (the functional API).

    Not constructed directly: `SAMModel(inputs, outputs, ...)` returns one.
    It is saved and loaded under the name "SAMModel".
    """


# Legacy HDF5 files (`model.save("model.h5")`) name a model by its Python
# class name, not its registered name "keras_sam>SAMModel"; the public
# custom-objects table lets `keras.models.load_model` find it by that name.
keras.saving.get_custom_objects().update(
    {"SAMModel": SAMModel, "FunctionalSAMModel": SAMModel}
)
