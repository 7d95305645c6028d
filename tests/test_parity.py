"""Every variant: official checkpoint -> convert.py -> create_model(pretrained) == timm's logits."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import paddle_model
from paddle_model.variants import VARIANTS
from reference.parity import compare, paddle_logits, seeded_input, torch_logits
from reference.timm_model import timm_from_checkpoint

from .conftest import run_cli

RTOL = 1e-5


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory):
    """``converted(variant)`` -> (source .pth, converted .pdparams), through the CLI, once each."""
    out = tmp_path_factory.mktemp("converted")
    done = {}

    def get(name):
        if name not in done:
            src = checkpoints(name)
            dst = out / f"{name}.pdparams"
            result = run_cli(src, dst)
            assert result.returncode == 0, result.stderr
            assert f"variant      {name} " in result.stdout
            done[name] = (src, dst)
        return done[name]

    return get


@pytest.mark.parametrize("name", list(VARIANTS))
def test_converted_logits_match_timm(name, converted):
    src, dst = converted(name)
    v = VARIANTS[name]
    reference = timm_from_checkpoint(src, v)
    model = paddle_model.create_model(name, pretrained=dst)
    x = seeded_input(2, v.img_size, seed=1)
    parity = compare("logits", torch_logits(reference, x), paddle_logits(model, x), RTOL)
    assert parity.ok, parity.line()
    assert parity.top1_agree == 1.0


def test_a_wrongly_transposed_square_proj_fails_parity(converted, tmp_path):
    """The check has teeth: a square weight transposed by mistake keeps its shape, not its logits."""
    name = "coat_lite_tiny"
    src, dst = converted(name)
    key = "serial_blocks1.0.factoratt_crpe.proj.weight"
    with open(dst, "rb") as f:
        state = pickle.load(f)
    assert state[key].shape[0] == state[key].shape[1]
    state[key] = np.ascontiguousarray(state[key].T)
    broken = tmp_path / "broken.pdparams"
    with open(broken, "wb") as f:
        pickle.dump(state, f)

    v = VARIANTS[name]
    x = seeded_input(2, v.img_size, seed=1)
    model = paddle_model.create_model(name, pretrained=broken)  # loads: shapes all fit
    parity = compare("logits", torch_logits(timm_from_checkpoint(src, v), x), paddle_logits(model, x), RTOL)
    assert not parity.ok
    assert parity.max_rel > 100 * RTOL


def test_verify_flag_reports_parity_and_exits_zero(checkpoints, tmp_path):
    result = run_cli(checkpoints("coat_lite_tiny"), tmp_path / "out.pdparams", "--verify")
    assert result.returncode == 0, result.stderr
    assert "parity       logits:" in result.stdout and ": ok" in result.stdout
