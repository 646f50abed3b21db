"""The public API: every exported name imports and is documented."""

import keras_sam


def test_every_public_name_is_exported_and_documented():
    assert keras_sam.__version__
    for name in keras_sam.__all__:
        obj = getattr(keras_sam, name)
        assert obj.__doc__, f"{name} has no docstring"
