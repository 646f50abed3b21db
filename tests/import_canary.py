"""A module that must never be imported by loading a file (test_loading.py).

It defines a valid model class, so a loader that imports the module a file
names would succeed in loading it; the test checks `sys.modules` instead.
"""

import keras


class Canary(keras.Model):
    """A plain subclass; importing this module is the event under test."""
