"""The public API: every exported name imports and is documented."""

import importlib

import pytest

import keras_sam


def test_every_public_name_is_exported_and_documented():
    assert keras_sam.__version__
    for name in keras_sam.__all__:
        obj = getattr(keras_sam, name)
        assert obj.__doc__, f"{name} has no docstring"


# The re-exporting modules of old import paths are gone (nothing was ever
# released under them): one place per object.
REMOVED = ("hessian", "sharpness", "landscape", "landscape_plots",
           "bootstrap", "tuner", "hypermodel", "sharding")


@pytest.mark.parametrize("name", REMOVED)
def test_old_import_paths_are_gone(name):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"keras_sam.{name}")
