# The two commands of the README:
#   make demo   set up .venv and run the noisy-label SAM vs SGD job on digits
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test

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
	$(BIN)/python -m pytest -q tests --doctest-modules keras_sam
