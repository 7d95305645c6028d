"""Every checkpoint layout users hold converts at parity; bad input is refused in one line."""

from __future__ import annotations

import argparse
import json

import ml_dtypes
import numpy as np
import pytest
import torch

import paddle_model
from converter.pipeline import convert_checkpoint
from reference.checkpoints import official_state_dict, seeded_model
from reference.parity import verify_conversion
from reference.timm_model import timm_from_checkpoint

from .conftest import assert_refused, run_cli
from .hostile import convert_each, mutations

RTOL = 1e-5
LITE, FULL = "coat_lite_tiny", "coat_tiny"


def assert_parity(src, dst, variant, ema=False):
    report = verify_conversion(src, dst, variant, seed=3, tolerance=RTOL, ema=ema)
    assert report.ok, report.table()


def convert_ok(src, dst, *flags):
    result = run_cli(src, dst, *flags)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    """As the official train script saves it: weights, EMA, optimizer, scheduler, epoch, args."""
    model = seeded_model(LITE, seed=0)
    ema = seeded_model(LITE, seed=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 3, 224, 224)).sum().backward()
    optimizer.step()
    path = tmp_path_factory.mktemp("train") / "checkpoint.pth"
    torch.save(
        {
            "model": official_state_dict(model),
            "model_ema": official_state_dict(ema),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": {"base_lrs": [1e-3], "last_epoch": 5},
            "epoch": 5,
            "args": argparse.Namespace(model=LITE, lr=1e-3, batch_size=256, output_dir="out"),
        },
        path,
    )
    return path


def test_training_checkpoint_is_refused_by_weights_only_torch_load(training_checkpoint):
    with pytest.raises(Exception, match="Namespace"):
        torch.load(training_checkpoint, weights_only=True)


def test_training_checkpoint_converts_model_weights_by_default(training_checkpoint, tmp_path):
    dst = tmp_path / "model.pdparams"
    assert "'model' entry" in convert_ok(training_checkpoint, dst).stdout
    assert_parity(training_checkpoint, dst, LITE)


def test_training_checkpoint_ema_weights(training_checkpoint, tmp_path):
    dst, plain = tmp_path / "ema.pdparams", tmp_path / "plain.pdparams"
    assert "'model_ema' entry" in convert_ok(training_checkpoint, dst, "--ema").stdout
    convert_ok(training_checkpoint, plain)
    assert_parity(training_checkpoint, dst, LITE, ema=True)
    ema, model = paddle_model.read_weights(dst), paddle_model.read_weights(plain)
    assert not np.array_equal(ema["cls_token1"], model["cls_token1"])


def test_ema_flag_without_ema_weights(tmp_path):
    src = tmp_path / "no_ema.pth"
    torch.save({"model": seeded_model(LITE).state_dict(), "model_ema": None}, src)
    assert_refused(run_cli(src, tmp_path / "o.pdparams", "--ema"), "no non-empty model_ema")


def _wrapped(module: torch.nn.Module) -> torch.nn.Module:
    wrapper = torch.nn.Module()
    wrapper.module = module  # what DistributedDataParallel's state dict looks like
    return wrapper


@pytest.mark.parametrize("layout", ["bare", "state_dict", "state_dict_ema", "ddp", "compiled"])
def test_wrapped_and_prefixed_state_dicts(layout, tmp_path):
    model = seeded_model(FULL)
    state = {
        "bare": lambda: model.state_dict(),
        "state_dict": lambda: {"state_dict": model.state_dict(), "epoch": 3},
        "state_dict_ema": lambda: {
            "state_dict": seeded_model(FULL, 5).state_dict(),
            "state_dict_ema": model.state_dict(),
        },
        "ddp": lambda: {"model": _wrapped(model).state_dict()},
        "compiled": lambda: torch.compile(model).state_dict(),
    }[layout]()
    src, dst = tmp_path / "src.pth", tmp_path / "dst.pdparams"
    torch.save(state, src)
    ema = layout == "state_dict_ema"
    out = convert_ok(src, dst, *(["--ema"] if ema else [])).stdout
    if layout in ("ddp", "compiled"):
        assert "prefix" in out
    assert_parity(src, dst, FULL, ema=ema)


@pytest.mark.parametrize("variant", [LITE, FULL])
def test_timm_hub_safetensors_with_aliases_in_metadata(variant, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_model

    src, dst = tmp_path / "model.safetensors", tmp_path / "model.pdparams"
    save_model(seeded_model(variant), str(src))
    with safe_open(str(src), "pt") as f:
        names, metadata = set(f.keys()), f.metadata()
    assert not any(".cpe." in k or ".crpe." in k or ".mlp3." in k for k in names)
    assert any(".cpe." in k for k in metadata)
    out = convert_ok(src, dst).stdout
    assert "0 checked equal" in out and "filled" in out
    assert_parity(src, dst, variant)


def test_timm_pth(checkpoints, tmp_path):
    dst = tmp_path / "timm.pdparams"
    assert "bare state dict" in convert_ok(checkpoints(FULL, "timm"), dst).stdout
    assert_parity(checkpoints(FULL, "timm"), dst, FULL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sources_keep_their_dtype_and_bits(dtype, tmp_path):
    src = tmp_path / "half.pth"
    state = {k: v.to(dtype) for k, v in official_state_dict(seeded_model(LITE)).items()}
    torch.save({"model": state}, src)
    for suffix in (".pdparams", ".safetensors"):
        dst = tmp_path / f"out{suffix}"
        convert_ok(src, dst)
        weights = paddle_model.read_weights(dst)
        expected_dtype = np.float16 if dtype == torch.float16 else ml_dtypes.bfloat16
        assert {w.dtype for w in weights.values()} == {np.dtype(expected_dtype)}
        source = state["serial_blocks2.0.mlp.fc1.weight"].view(torch.int16).numpy()
        converted = weights["serial_blocks2.0.mlp.fc1.weight"].view(np.int16)
        np.testing.assert_array_equal(converted, source.T)  # bit-exact, transposed
        assert_parity(src, dst, LITE)


def test_dtype_flag_casts(checkpoints, tmp_path):
    dst = tmp_path / "bf16.safetensors"
    convert_ok(checkpoints(LITE), dst, "--dtype", "bfloat16")
    weights = paddle_model.read_weights(dst)
    assert {w.dtype.name for w in weights.values()} == {"bfloat16"}
    source = timm_from_checkpoint(checkpoints(LITE), LITE).state_dict()["head.weight"]
    expected = source.to(torch.bfloat16).view(torch.int16).numpy().T
    np.testing.assert_array_equal(weights["head.weight"].view(np.int16), expected)


def test_output_is_byte_identical_across_runs(checkpoints, tmp_path):
    for suffix in (".pdparams", ".safetensors"):
        a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        convert_ok(checkpoints(FULL), a)
        convert_ok(checkpoints(FULL), b)
        assert a.read_bytes() == b.read_bytes()


def test_json_report(checkpoints, tmp_path):
    import hashlib

    src = checkpoints(LITE)
    report = json.loads(convert_ok(src, tmp_path / "o.pdparams", "--json").stdout)
    assert report["variant"] == LITE
    assert report["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert report["dtype"] == "float32"
    m = report["mapping"]
    assert (m["tensors"], m["written"], len(m["transposed"]), len(m["dropped"])) == (152, 216, 33, 6)
    assert set(report["timings"]) == {"read_s", "map_s", "write_s"}


# --- refusals -------------------------------------------------------------------------------


def _save_state(tmp_path, edit, variant=LITE, name="src.pth"):
    state = official_state_dict(seeded_model(variant))
    state = {k: v.clone() for k, v in state.items()}  # untie aliases so an edit hits one key
    edit(state)
    path = tmp_path / name
    torch.save({"model": state}, path)
    return path


def test_pickle_code_in_a_pth_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    src = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token1": Payload()}}, src)
    assert_refused(run_cli(src, tmp_path / "o.pdparams"), "system", "nothing in the file was executed")
    assert not marker.exists()
    assert not (tmp_path / "o.pdparams").exists()


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"", "is empty"),
        (b"\x00" * 64, "neither a PyTorch checkpoint (zip or legacy format) nor a .safetensors file"),
        (bytes(range(256)) * 8, "neither a PyTorch checkpoint"),
    ],
)
def test_empty_or_random_bytes(tmp_path, content, phrase):
    src = tmp_path / "bad.pth"
    src.write_bytes(content)
    assert_refused(run_cli(src, tmp_path / "o.pdparams"), phrase)


def test_truncated_checkpoint(checkpoints, tmp_path):
    src = tmp_path / "cut.pth"
    data = checkpoints(LITE).read_bytes()
    src.write_bytes(data[: len(data) // 2])
    assert_refused(run_cli(src, tmp_path / "o.pdparams"), "truncated or corrupt")


def test_directory_as_source(tmp_path):
    assert_refused(run_cli(tmp_path, tmp_path / "o.pdparams"), "is a directory")


def test_ambiguous_variant_needs_the_flag(tmp_path):
    src = _save_state(tmp_path, lambda s: None, variant="coat_lite_medium", name="mine.pth")
    assert_refused(
        run_cli(src, tmp_path / "o.pdparams"), "coat_lite_medium and coat_lite_medium_384", "--variant"
    )
    out = convert_ok(src, tmp_path / "o.pdparams", "--variant", "coat_lite_medium_384").stdout
    assert "coat_lite_medium_384" in out


def test_missing_key_is_named(tmp_path):
    src = _save_state(tmp_path, lambda s: s.pop("serial_blocks3.1.mlp.fc2.bias"))
    assert_refused(
        run_cli(src, tmp_path / "o.pdparams", "--variant", LITE),
        "1 keys missing (serial_blocks3.1.mlp.fc2.bias)",
    )


def test_unexpected_key_is_named(tmp_path):
    src = _save_state(tmp_path, lambda s: s.update({"extra.weight": torch.zeros(3)}))
    assert_refused(run_cli(src, tmp_path / "o.pdparams", "--variant", LITE), "unexpected keys (extra.weight)")


def test_shape_mismatch_names_both_shapes(tmp_path):
    src = _save_state(tmp_path, lambda s: s.update({"cls_token2": torch.zeros(1, 1, 5)}))
    assert_refused(
        run_cli(src, tmp_path / "o.pdparams", "--variant", LITE),
        "cls_token2 is [1, 1, 5], expected [1, 1, 128]",
    )


def test_aliases_that_disagree(tmp_path):
    src = _save_state(tmp_path, lambda s: s["serial_blocks2.1.cpe.proj.bias"].add_(1.0))
    assert_refused(
        run_cli(src, tmp_path / "o.pdparams"),
        "serial_blocks2.1.cpe.proj.bias should be the same tensor as cpe2.proj.bias",
    )


def test_nonfinite_values_need_the_flag(tmp_path):
    src = _save_state(tmp_path, lambda s: s["head.bias"].__setitem__(3, float("nan")))
    dst = tmp_path / "o.pdparams"
    assert_refused(run_cli(src, dst), "head.bias contains NaN or Inf", "--allow-nonfinite")
    assert not dst.exists()
    convert_ok(src, dst, "--allow-nonfinite")


def test_fuzzed_checkpoints_fail_closed_or_convert_identically(checkpoints, tmp_path):
    """Hundreds of flipped or cut copies: each is refused cleanly or gives the exact output."""
    data = checkpoints(LITE).read_bytes()
    reference = tmp_path / "ref.pdparams"
    convert_checkpoint(checkpoints(LITE), reference)
    expected = reference.read_bytes()
    src, dst = tmp_path / "fuzz.pth", tmp_path / "fuzz.pdparams"
    refused = convert_each(mutations(data, range(len(data)), 300, seed=0), src, dst, expected)
    assert refused > 250
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
