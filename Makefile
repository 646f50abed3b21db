# The two commands of the README:
#   make demo   set up .venv and run the noisy-label SAM vs SGD job on digits
#   make test   set up .venv and run the test suite on TensorFlow (its
#               processes never import JAX or PyTorch: the doctests skip
#               their backend folders), then tests/core, the hand
#               computations of every option, on JAX (its fast tier: XLA
#               compiles the slow tier's recurrent cases for minutes) and
#               on PyTorch (with tests/backend/torch), each with its
#               backend folder's doctests; not
#               the `extended` tests (the command-line tools end to end,
#               the full Keras suite), which
#   make test-extended   runs
# and CI's second job (.ci/run):
#   make test-oldest   build the wheel, install it in a fresh venv with the
#                      oldest declared versions, run the core test subset
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test test-extended test-oldest

$(BIN)/.installed: requirements.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m experiments.noisy_labels --workdir=runs/demo

test: setup
	$(BIN)/python -m pytest -q -n 2 -m "not extended" tests \
	  --doctest-modules keras_sam \
	  --ignore=keras_sam/backend/jax --ignore=keras_sam/backend/torch
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q -n 2 -m "not slow" \
	  tests/core --doctest-modules keras_sam/backend/jax
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q -n 2 tests/core \
	  tests/backend/torch --doctest-modules keras_sam/backend/torch

test-extended: setup
	$(BIN)/python -m pytest -q -n 2 -m extended tests

test-oldest:
	bash .ci/run oldest
