# Two entry points, each sets itself up on a fresh machine:
#   make demo   seeded coat_lite_tiny checkpoint -> convert.py -> parity against timm
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	mkdir -p demo
	$(PY) -m reference.make_checkpoint coat_lite_tiny demo/coat_lite_tiny.pth --force
	$(PY) convert.py demo/coat_lite_tiny.pth demo/coat_lite_tiny.pdparams --force --verify

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo
