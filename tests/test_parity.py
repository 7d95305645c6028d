"""Every variant: official checkpoint -> convert.py -> the Paddle model equals timm everywhere.

Logits, CLS features, each scale's output, the backbone feature maps and every block, at the
default input size for all eight variants and at other sizes (multiples of 32 and not) for a
CoaT and a CoaT-Lite.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle

import numpy as np
import pytest

from paddle_model.variants import VARIANTS
from reference.parity import compare, seeded_input, verify_conversion

from .conftest import ROOT, run_cli, run_python

RTOL = 1e-5


@pytest.mark.parametrize("name", list(VARIANTS))
def test_converted_model_matches_timm_at_default_size(name, converted):
    src, dst = converted(name)
    report = verify_conversion(src, dst, name, batch=2, seed=1, tolerance=RTOL)
    assert report.ok, report.table()
    assert report.logits.top1_agree == 1.0
    names = [c.name for c in report.outputs]
    assert names == [
        "x1",
        "x2",
        "x3",
        "x4",
        "x1_nocls",
        "x2_nocls",
        "x3_nocls",
        "x4_nocls",
        "cls_features",
        "logits",
    ]
    depth = sum(VARIANTS[name].serial_depths) + 3 * VARIANTS[name].parallel_depth
    assert len(report.blocks) == 4 + depth  # every patch embedding and block compared


@pytest.mark.parametrize("size", [256, 160, 230, (240, 320), (200, 296)])
@pytest.mark.parametrize("name", ["coat_tiny", "coat_lite_tiny"])
def test_converted_model_matches_at_other_input_sizes(name, size, converted):
    """Non-multiples of 32 run against timm with the official target-size resampling."""
    src, dst = converted(name)
    report = verify_conversion(src, dst, name, size=size, batch=2, seed=2, tolerance=RTOL)
    assert report.ok, report.table()
    assert report.input_size == ((size, size) if isinstance(size, int) else size)


def test_a_wrongly_transposed_square_proj_fails_parity(converted, tmp_path):
    """The check has teeth: a square weight transposed by mistake keeps its shape, not its outputs."""
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

    report = verify_conversion(src, broken, name, tolerance=RTOL)  # loads: the shapes all fit
    assert not report.ok
    assert report.first_divergence == "serial_blocks1.0"
    block = next(c for c in report.blocks if c.name == "serial_blocks1.0")
    assert block.max_rel > 100 * RTOL
    assert not report.logits.ok


def test_verify_flag_reports_parity_and_exits_zero(checkpoints, tmp_path):
    result = run_cli(checkpoints("coat_lite_tiny"), tmp_path / "out.pdparams", "--verify")
    assert result.returncode == 0, result.stderr
    assert "coat_lite_tiny at 224x224, batch 2:" in result.stdout
    assert "parity ok (tolerance 1e-05)" in result.stdout


def test_verify_json_includes_the_table(checkpoints, tmp_path):
    import json

    result = run_cli(checkpoints("coat_lite_tiny"), tmp_path / "out.pdparams", "--verify", "--json")
    assert result.returncode == 0, result.stderr
    parity = json.loads(result.stdout)["parity"]
    assert parity["ok"] and parity["first_divergence"] is None
    assert [o["name"] for o in parity["outputs"]][-1] == "logits"
    assert {"max_abs", "max_rel", "cosine", "top1_agree"} <= set(parity["outputs"][-1])


def test_verify_exits_one_when_parity_fails(checkpoints, tmp_path, monkeypatch):
    """Exit code 1 when the outputs differ: here Paddle LayerNorms built with a wrong epsilon."""
    import convert

    monkeypatch.setattr(
        "paddle_model.factory.get_variant", lambda name: dataclasses.replace(VARIANTS[name], norm_eps=1e-3)
    )
    code = convert.main([str(checkpoints("coat_lite_tiny")), str(tmp_path / "o.pdparams"), "--verify"])
    assert code == 1


def test_both_sides_trace_the_same_blocks_and_leave_no_hooks(converted):
    """run_torch and run_paddle (one hooked runner) record the same blocks in the same order, the
    classifier's input and the logits; their hooks are gone afterwards."""
    import paddle_model
    from reference.checkpoints import seeded_model
    from reference.parity import run_paddle, run_torch

    name = "coat_lite_tiny"
    _, dst = converted(name)
    torch_model = seeded_model(name)
    paddle_model_ = paddle_model.create_model(name, pretrained=dst)
    x = seeded_input(1, 224, seed=3)

    def hooks() -> list[int]:  # the models' own hooks, if any, stay
        torch_side = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in torch_model.modules()]
        layers = paddle_model_.sublayers(include_self=True)
        return torch_side + [len(m._forward_post_hooks) + len(m._forward_pre_hooks) for m in layers]

    before = hooks()
    ref_logits, ref_head, ref_trace = run_torch(torch_model, x)
    logits, head, trace = run_paddle(paddle_model_, x)
    assert [n for n, _ in ref_trace] == [n for n, _ in trace]
    assert len(trace) == 4 + sum(VARIANTS[name].serial_depths)
    assert compare("logits", ref_logits, logits).ok and compare("cls", ref_head, head).ok
    assert ref_head.shape == head.shape == (1, VARIANTS[name].embed_dims[-1])
    assert hooks() == before


def test_the_benchmarks_feed_the_parity_harness_seeded_batch(tmp_path):
    """benchmarks/_common.py's child prelude makes ``x`` with reference.parity.seeded_input."""
    spec = importlib.util.spec_from_file_location("_common", ROOT / "benchmarks" / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    code = common.seeded_batch_prelude(ROOT) + "np.save(sys.argv[4], x)\n"
    done = run_python("-c", code, "coat_lite_tiny", 3, 1, tmp_path / "x.npy", timeout=120)
    assert done.returncode == 0, done.stderr
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (3, 3, 224, 224) and np.array_equal(x, seeded_input(3, 224, seed=0))
