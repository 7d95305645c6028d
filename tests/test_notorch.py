"""Conversion needs no torch: run by ``make test`` in a virtual environment without it.

The checkpoints and timm's logits come from the full environment (``make test`` writes them to
``$COAT_NOTORCH_DIR``); here they are converted with convert.py and run in Paddle.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import paddle_model
from reference.parity import compare, run_paddle, seeded_input

from .conftest import run_cli

pytestmark = pytest.mark.notorch


@pytest.fixture(scope="module")
def fixtures() -> Path:
    folder = os.environ.get("COAT_NOTORCH_DIR")
    assert folder, "COAT_NOTORCH_DIR is not set: run these tests through `make test`"
    return Path(folder)


def test_torch_is_not_installed():
    assert importlib.util.find_spec("torch") is None


@pytest.mark.parametrize("variant, source", [("coat_lite_tiny", "coat_lite_tiny.pth"),
                                             ("coat_tiny", "coat_tiny.safetensors")])
def test_converts_without_torch_at_parity(fixtures, tmp_path, variant, source):
    dst = tmp_path / f"{variant}.pdparams"
    result = run_cli(fixtures / source, dst)
    assert result.returncode == 0, result.stderr
    assert f"variant      {variant} " in result.stdout
    model = paddle_model.create_model(variant, pretrained=dst)
    expected = np.load(fixtures / f"{variant}.logits.npy")
    x = seeded_input(2, paddle_model.get_variant(variant).img_size, seed=0)
    parity = compare("logits", expected, run_paddle(model, x)[0], top1=True)
    assert parity.ok, parity.line()


def test_verify_without_torch_is_refused_before_writing(fixtures, tmp_path):
    dst = tmp_path / "out.pdparams"
    result = run_cli(fixtures / "coat_lite_tiny.pth", dst, "--verify")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --verify needs torch and timm")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not dst.exists()


def test_evaluate_runs_without_torch(fixtures, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from .conftest import ROOT

    weights = tmp_path / "coat_lite_tiny.pdparams"
    assert run_cli(fixtures / "coat_lite_tiny.pth", weights).returncode == 0
    rng = np.random.default_rng(0)
    for k, folder in enumerate(["a", "b"]):
        (tmp_path / "val" / folder).mkdir(parents=True)
        for j in range(2):
            pixels = rng.integers(0, 256, (60 + 10 * j, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "val" / folder / f"{k}{j}.png")
    cmd = [sys.executable, "-m", "paddle_model.evaluate", str(tmp_path / "val"), "--variant",
           "coat_lite_tiny", "--weights", str(weights), "--workers", "0", "--quiet", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert '"evaluated": 4' in done.stdout
    refused = subprocess.run([*cmd, "--reference"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --reference runs timm beside the Paddle model")
    assert "python -m reference.evaluate" in refused.stderr
