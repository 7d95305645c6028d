"""The console scripts (``coat-convert``, ``coat-release``, ``coat-evaluate``, ``coat-predict``,
``coat-export``, ``coat-train``): each imports its command's module only when run.

The script pip writes for an entry point imports the module before any of its code runs.
``paddle_model`` checks at import that a supported Paddle is installed (it is not a requirement:
a GPU user installs ``paddlepaddle-gpu`` by hand), so without one every command but
``coat-convert`` would stop there with an import traceback. Here it is one line, saying what to
install, and exit code 2. This module sits above the three packages, like ``convert``: it names
their commands and imports none of them until called.
"""

from __future__ import annotations

import importlib

from converter.cli import fail
from converter.errors import PaddleMissingError


def _run(module: str) -> int:
    try:
        main = importlib.import_module(module).main
    except PaddleMissingError as e:  # paddle_model's check; any other ImportError is a real bug
        return fail(str(e))
    return main()


def convert() -> int:
    return _run("convert")


def release() -> int:
    return _run("reference.release")


def evaluate() -> int:
    return _run("paddle_model.evaluate")


def predict() -> int:
    return _run("paddle_model.predict")


def export() -> int:
    return _run("paddle_model.export")


def train() -> int:
    return _run("paddle_model.train.cli")
