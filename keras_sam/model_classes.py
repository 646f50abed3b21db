"""SAM for any model class: functional variants and SAM subclasses.

`SAMModel(inputs, outputs)` must build a functional model the way
`keras.Model(inputs, outputs)` does, and `SAMModel.from_model` must give any
`keras.Model` subclass (a user's, a KerasHub task) SAM's step while keeping
its class. These helpers make those classes, register them for saving, and
keep Keras' rewriting of `__bases__` away from `SAMModel`.
"""

import contextlib
import difflib
import importlib

import keras

from keras_sam import _keras

Functional = _keras.Functional


_SAM_CLASSES = {}


def sam_class(base, sam_model):
    """The SAM subclass of a `keras.Model` class: `(SAMModel, base)`.

    It keeps `base`'s name and methods and saves under "keras_sam>SAMModel"
    with `base` named in its config, so a fresh process loads it.
    """
    if issubclass(base, sam_model):
        return base
    if base.train_step is not keras.Model.train_step:
        raise ValueError(
            f"{base.__name__} overrides `train_step`, which SAM's step would "
            "replace. Subclass `keras_sam.SAMModel` instead and call "
            "`self.compute_sam_gradients(x, y, sample_weight)` in your "
            "train_step."
        )
    if base not in _SAM_CLASSES:
        cls = type(
            base.__name__,
            (sam_model, base),
            {
                "__module__": base.__module__,
                "__doc__": base.__doc__,
                "_sam_base": base,
            },
        )
        _keras.register_as(cls, keras.saving.get_registered_name(sam_model))
        _SAM_CLASSES[base] = cls
    return _SAM_CLASSES[base]


# The packages whose modules Keras' own loader imports by the name a file
# gives (keras/src/saving/serialization_lib.py, since the fix of
# CVE-2025-1550); any other class must be registered or passed in.
TRUSTED_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp"})


def resolve_class(reference, custom_objects=None):
    """The model class a `sam_base_class` config entry names.

    A file is input: like Keras' own loader, this imports no module the
    file names unless it belongs to Keras or KerasHub (`TRUSTED_PACKAGES`).
    Any other class must be registered
    (`keras.saving.register_keras_serializable`) or in `custom_objects`.

    Raises:
        ValueError: The class is not found that way, or is not a
            `keras.Model` subclass.
    """
    reference = dict(reference)
    module = str(reference.get("module", ""))
    name = str(reference.get("class_name", ""))
    found = keras.saving.get_registered_object(
        reference.get("registered_name") or name, custom_objects
    ) or (custom_objects or {}).get(name)
    if found is None and module.split(".")[0] in TRUSTED_PACKAGES:
        found = getattr(importlib.import_module(module), name, None)
    if not isinstance(found, type) or not issubclass(found, keras.Model):
        raise ValueError(
            f"Cannot load this SAM model: its model class {module}.{name} "
            "is not known here, and a file's class is never imported from "
            "the module the file names (only Keras and KerasHub classes "
            "are). Import the module that defines the class and register "
            "it with `@keras.saving.register_keras_serializable()`, or pass "
            f"`custom_objects={{{name!r}: {name}}}` to `load_model`. "
            f"Received: sam_base_class={reference!r}"
        )
    return found


@contextlib.contextmanager
def bases_kept(cls):
    """Undoes Keras' rewriting of `cls.__bases__` during construction.

    `keras.Model.__init__` with functional arguments rewrites the bases of
    every class in the model's hierarchy to derive from `Functional`
    (`inject_functional_model_class`); KerasHub tasks construct themselves
    that way. SAMModel must stay a plain `keras.Model` subclass for every
    later subclass, so its bases are restored afterwards.
    """
    bases = cls.__bases__
    try:
        yield
    finally:
        if cls.__bases__ != bases:
            cls.__bases__ = bases



_FUNCTIONAL_KWARGS = {"inputs", "outputs", "name", "trainable"}


def check_functional_kwargs(kwargs, sam_names):
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


def is_functional_call(args, kwargs) -> bool:
    """Whether constructor arguments are a functional model's: inputs that
    are `keras.Input` tensors, and outputs (by position or keyword)."""
    inputs = args[0] if args else kwargs.get("inputs")
    has_outputs = len(args) >= 2 or "outputs" in kwargs
    return has_outputs and any(
        isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(inputs)
    )


_FUNCTIONAL_VARIANTS = {}


def functional_variant(cls, functional_sam_model):
    """`cls` with `Functional` mixed in, saved under `cls`'s name."""
    if cls is functional_sam_model.__bases__[0]:
        return functional_sam_model
    if cls not in _FUNCTIONAL_VARIANTS:
        variant = type(
            cls.__name__,
            (cls, Functional),
            {"__module__": cls.__module__, "__doc__": cls.__doc__},
        )
        _keras.register_as(variant, keras.saving.get_registered_name(cls))
        _FUNCTIONAL_VARIANTS[cls] = variant
    return _FUNCTIONAL_VARIANTS[cls]
