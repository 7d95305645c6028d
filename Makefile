# Two entry points, each sets itself up on a fresh machine:
#   make demo   seeded coat_lite_tiny checkpoint -> convert.py -> parity against timm
#   make test   the test suite, then the installed wheel's tests in an environment without torch
#               on the oldest supported Paddle
PYTHON ?= python3
VENV ?= .venv
NOTORCH_VENV ?= .venv-notorch
PY := $(VENV)/bin/python
NOTORCH_DIR := build/notorch
WHEEL_DIR := build/wheel
# the oldest Paddle the package declares (paddle_model.OLDEST_PADDLE); the main venv has the newest
OLDEST_PADDLE := 3.0.0

.PHONY: demo test lint test-main test-notorch wheel clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# a user's environment: Paddle installed first (as a GPU user's paddlepaddle-gpu would be), the
# oldest supported one; no torch, no timm. The project's wheel goes in by test-notorch.
$(NOTORCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(NOTORCH_VENV)
	$(NOTORCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(NOTORCH_VENV)/bin/python -m pip install -q paddlepaddle==$(OLDEST_PADDLE) pytest
	touch $@

# the wheel a user installs, built from the checkout (no dependencies bundled)
wheel: $(VENV)/.installed
	rm -rf $(WHEEL_DIR) build/lib build/bdist.*  # nothing stale from an earlier build goes in
	$(PY) -m pip wheel -q --no-deps -w $(WHEEL_DIR) .

demo: $(VENV)/.installed
	mkdir -p demo
	$(PY) -m reference.make_checkpoint coat_lite_tiny demo/coat_lite_tiny.pth --force
	$(PY) convert.py demo/coat_lite_tiny.pth demo/coat_lite_tiny.pdparams --force --verify

test: lint test-main test-notorch

# the layers of pyproject.toml's [tool.importlinter], ruff's rules and its format
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-main: $(VENV)/.installed
	$(PY) -m pytest -q -m "not notorch"

# The wheel, installed beside that Paddle (which it must leave as it is), tested from another
# directory: the commands on PATH convert, predict, evaluate and export; the tests' imports come
# from the installed package (--import-mode=append puts the checkout after site-packages).
test-notorch: $(VENV)/.installed $(NOTORCH_VENV)/.installed wheel
	rm -rf $(NOTORCH_DIR) && mkdir -p $(NOTORCH_DIR)
	$(NOTORCH_VENV)/bin/python -m pip install -q $(WHEEL_DIR)/coat_paddle-*.whl
	$(NOTORCH_VENV)/bin/python -m pip install -q --force-reinstall --no-deps $(WHEEL_DIR)/coat_paddle-*.whl
	$(PY) -m reference.make_checkpoint coat_lite_tiny $(NOTORCH_DIR)/coat_lite_tiny.pth \
		--logits $(NOTORCH_DIR)/coat_lite_tiny.logits.npy
	$(PY) -m reference.make_checkpoint coat_tiny $(NOTORCH_DIR)/coat_tiny.safetensors \
		--logits $(NOTORCH_DIR)/coat_tiny.logits.npy
	cd $(NOTORCH_DIR) && env -u PYTHONPATH COAT_NOTORCH_DIR=$(abspath $(NOTORCH_DIR)) \
		COAT_EXPECT_PADDLE=$(OLDEST_PADDLE) $(abspath $(NOTORCH_VENV))/bin/python -m pytest -q \
		-m notorch --import-mode=append -p no:cacheprovider --rootdir $(CURDIR) \
		$(CURDIR)/tests/test_notorch.py

clean:
	rm -rf $(VENV) $(NOTORCH_VENV) build demo
