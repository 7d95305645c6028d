"""Legacy torch files (torch < 1.6, or ``_use_new_zipfile_serialization=False``) convert at
parity, exactly as their zip twins do, and hostile ones are refused like zip ones."""

from __future__ import annotations

import argparse
import struct

import numpy as np
import pytest
import torch

import paddle_model
from converter.torch_pickle import is_legacy_torch
from reference.checkpoints import official_state_dict, seeded_model

from . import hostile as h
from .conftest import run_cli
from .test_cli import assert_refused
from .test_sources import assert_parity, convert_ok

LITE, FULL = "coat_lite_tiny", "coat_tiny"


def legacy_save(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    assert is_legacy_torch(path)
    return path


def training_dict(variant: str) -> dict:
    """As the official train script saves it: weights, EMA, optimizer state, epoch, args."""
    model = seeded_model(variant, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():  # an optimizer state as a step leaves it, without the backward
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    model = seeded_model(variant, seed=0)  # the weights as seeded, whatever the step did
    return {
        "model": official_state_dict(model),
        "model_ema": official_state_dict(seeded_model(variant, seed=7)),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": {"base_lrs": [1e-3], "last_epoch": 5},
        "epoch": 5,
        "args": argparse.Namespace(model=variant, lr=1e-3, batch_size=256),
    }


@pytest.mark.parametrize("variant", [LITE, FULL])
@pytest.mark.parametrize("layout", ["official", "training"])
def test_legacy_file_converts_at_parity(variant, layout, tmp_path):
    obj = (
        {"model": official_state_dict(seeded_model(variant))}
        if layout == "official"
        else training_dict(variant)
    )
    src = legacy_save(obj, tmp_path / "legacy.pth")
    dst = tmp_path / "legacy.pdparams"
    assert "legacy torch file, 'model' entry" in convert_ok(src, dst).stdout
    assert_parity(src, dst, variant)
    if layout == "training" and variant == LITE:
        ema = tmp_path / "ema.pdparams"
        assert "'model_ema' entry" in convert_ok(src, ema, "--ema").stdout
        assert_parity(src, ema, variant, ema=True)


def test_legacy_and_zip_files_give_identical_bytes(tmp_path):
    obj = {"model": official_state_dict(seeded_model(FULL))}
    legacy, zipped = legacy_save(obj, tmp_path / "legacy.pth"), tmp_path / "zip.pth"
    torch.save(obj, zipped)
    for suffix in (".pdparams", ".safetensors"):
        a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        convert_ok(legacy, a)
        convert_ok(zipped, b)
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_legacy_half_precision_keeps_its_bits(dtype, tmp_path):
    state = {k: v.to(dtype) for k, v in official_state_dict(seeded_model(LITE)).items()}
    src = legacy_save({"model": state}, tmp_path / "half.pth")
    dst = tmp_path / "half.safetensors"
    convert_ok(src, dst)
    converted = paddle_model.read_weights(dst)["serial_blocks2.0.mlp.fc1.weight"].view(np.int16)
    original = state["serial_blocks2.0.mlp.fc1.weight"].view(torch.int16).numpy().T
    np.testing.assert_array_equal(converted, original)


def test_legacy_pickle_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    src = legacy_save({"model": {"cls_token1": Payload()}}, tmp_path / "evil.pth")
    assert_refused(run_cli(src, tmp_path / "o.pdparams"), "system", "nothing in the file was executed")
    assert not marker.exists() and not (tmp_path / "o.pdparams").exists()


def _storage_records(data: bytes) -> int:
    """Where the storages begin: after the five pickles (read as opcodes, not run)."""
    import io
    import pickletools

    f = io.BytesIO(data)
    for _ in range(5):
        for _ in pickletools.genops(f):
            pass
    return f.tell()


@pytest.mark.parametrize(
    "damage, phrase",
    [
        ("truncated", "truncated"),
        ("wrong count", "records 7 elements"),
        ("big-endian", "big-endian"),
    ],
)
def test_damaged_legacy_files_are_refused(tmp_path, damage, phrase):
    src = legacy_save({"model": official_state_dict(seeded_model(LITE))}, tmp_path / "src.pth")
    data = bytearray(src.read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 1000]
    elif damage == "wrong count":
        start = _storage_records(bytes(data))
        data[start : start + 8] = struct.pack("<q", 7)
    else:
        at = data.index(b"little_endian") + len(b"little_endian")
        data[at : at + 4] = data[at : at + 4].replace(b"\x88", b"\x89", 1)
    src.write_bytes(bytes(data))
    assert_refused(run_cli(src, tmp_path / "o.pdparams"), phrase)
    assert not (tmp_path / "o.pdparams").exists()


def test_storage_keys_that_do_not_match_are_refused(tmp_path):
    body = h.EMPTY_DICT + h.s("w") + h.tensor("0", 4, h.i(0), (h.i(4),), (h.i(1),)) + h.SETITEM
    src = h.legacy_torch(tmp_path / "keys.pth", h.pickle_of(body), {"1": bytes(16)})
    assert_refused(run_cli(src, tmp_path / "o.pdparams"), "storage keys does not match")
