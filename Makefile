# Two entry points, each sets itself up on a fresh machine:
#   make demo   seeded coat_lite_tiny checkpoint -> convert.py -> parity against timm
#   make test   the test suite, then the conversion tests in an environment without torch
PYTHON ?= python3
VENV ?= .venv
NOTORCH_VENV ?= .venv-notorch
PY := $(VENV)/bin/python
NOTORCH_DIR := build/notorch

.PHONY: demo test lint test-main test-notorch clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# the project without its reference extra: no torch, no timm
$(NOTORCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(NOTORCH_VENV)
	$(NOTORCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(NOTORCH_VENV)/bin/python -m pip install -q -e . pytest
	touch $@

demo: $(VENV)/.installed
	mkdir -p demo
	$(PY) -m reference.make_checkpoint coat_lite_tiny demo/coat_lite_tiny.pth --force
	$(PY) convert.py demo/coat_lite_tiny.pth demo/coat_lite_tiny.pdparams --force --verify

test: lint test-main test-notorch

# the layers of pyproject.toml's [tool.importlinter], and ruff's rules
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

test-main: $(VENV)/.installed
	$(PY) -m pytest -q -m "not notorch"

test-notorch: $(VENV)/.installed $(NOTORCH_VENV)/.installed
	rm -rf $(NOTORCH_DIR) && mkdir -p $(NOTORCH_DIR)
	$(PY) -m reference.make_checkpoint coat_lite_tiny $(NOTORCH_DIR)/coat_lite_tiny.pth \
		--logits $(NOTORCH_DIR)/coat_lite_tiny.logits.npy
	$(PY) -m reference.make_checkpoint coat_tiny $(NOTORCH_DIR)/coat_tiny.safetensors \
		--logits $(NOTORCH_DIR)/coat_tiny.logits.npy
	COAT_NOTORCH_DIR=$(NOTORCH_DIR) $(NOTORCH_VENV)/bin/python -m pytest -q -m notorch tests/test_notorch.py

clean:
	rm -rf $(VENV) $(NOTORCH_VENV) build demo
