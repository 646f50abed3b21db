"""Keras' own model and trainer tests, run with `SAMModel` for `keras.Model`.

`plugin` is the pytest plugin that substitutes the model class inside
Keras' test modules, `known_differences` the expected failures with their
reasons, and `test_keras_suite` the project test that runs it all.
"""
