"""converter.extras.install_hint: the packages of an extra, from the distribution's metadata."""

from __future__ import annotations

import os
import shlex
from importlib import metadata

import pytest

from converter import extras
from converter.extras import install_hint
from tests.conftest import run_python


def _fake_requires(lines: list[str]):
    def requires(dist: str) -> list[str]:
        assert dist == "coat-paddle"
        return lines

    return requires


def test_the_installed_metadata_names_the_cpu_extras_paddle():
    assert install_hint("cpu") == "pip install 'paddlepaddle>=3.0'"


def test_the_installed_metadata_names_the_reference_extras_pins_in_pyprojects_order():
    assert install_hint("reference") == (
        "pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31 'huggingface_hub>=0.23' jinja2 "
        "'matplotlib>=3.5'"
    )


def test_every_requirement_survives_a_shell_as_one_word():
    """What the user pastes reaches pip as the requirements themselves (no `>` redirection)."""
    words = shlex.split(install_hint("onnx"))
    assert words == ["pip", "install", "paddle2onnx==2.1.0", "onnx<=1.17.0,>=1.16", "onnxruntime>=1.17"]


def test_without_metadata_it_says_to_install_the_extra_from_the_checkout(monkeypatch):
    def absent(dist: str) -> list[str]:
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(extras.metadata, "requires", absent)
    assert install_hint("cpu") == "pip install '.[cpu]' in the coat-paddle checkout"


def test_an_extra_the_installed_version_lacks_falls_back_to_the_checkout():
    assert install_hint("no_such_extra") == "pip install '.[no_such_extra]' in the coat-paddle checkout"


def test_only_the_extras_requirements_for_this_platform_are_named(monkeypatch):
    lines = [
        "numpy>=1.24",
        'pillow>=9; extra == "other"',
        'alpha>=1; extra == "x"',
        "beta==2; extra == \"x\" and sys_platform == 'no-such-platform'",
        "gamma; extra == 'x' and python_version >= '3'",
    ]
    monkeypatch.setattr(extras.metadata, "requires", _fake_requires(lines))
    assert install_hint("x") == "pip install 'alpha>=1' gamma"


def test_an_extra_of_extras_expands_once_each(monkeypatch):
    lines = [
        'alpha>=1; extra == "a"',
        'shared; extra == "a"',
        'shared; extra == "b"',
        'coat-paddle[a,b]; extra == "all"',
        'coat_paddle[all]; extra == "a"',  # a cycle, with the name spelled otherwise
        'omega; extra == "all"',
    ]
    monkeypatch.setattr(extras.metadata, "requires", _fake_requires(lines))
    assert install_hint("all") == "pip install 'alpha>=1' shared omega"


@pytest.mark.parametrize("extra", ["cpu", "reference", "onnx", "hub", "train"])
def test_no_hint_names_the_unpublished_package(extra):
    assert "coat-paddle" not in install_hint(extra)


def test_the_hub_without_huggingface_hub_names_the_package_to_install(tmp_path):
    code = (
        "import sys; sys.modules['huggingface_hub'] = None  # as if not installed\n"
        "from paddle_model.errors import WeightsError\n"
        "from paddle_model.hub import fetch_hf\n"
        "try:\n    fetch_hf('someone/coat', 'coat_lite_tiny')\n"
        "except WeightsError as e:\n    print(e)\n"
    )
    done = run_python("-c", code, env={**os.environ, "COAT_PADDLE_CACHE": str(tmp_path)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "hf-hub:someone/coat: reading from the Hugging Face Hub needs the huggingface_hub package: "
        "pip install 'huggingface_hub>=0.23'"
    )
    assert list(tmp_path.iterdir()) == []
