"""The variant table agrees with timm's models and configs, variant by variant."""

from __future__ import annotations

import sys

import pytest
import timm
import torch

from paddle_model.variants import VARIANTS


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
    name = request.param
    return VARIANTS[name], timm.create_model(name, pretrained=False)


def test_table_needs_neither_torch_nor_paddle():
    import subprocess

    code = (
        "import sys, paddle_model.variants, paddle_model.layout, converter.mapping; "
        "print(sorted(m for m in ('torch', 'paddle') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_architecture_matches_timm(pair):
    v, model = pair
    assert tuple(model.embed_dims) == v.embed_dims
    assert tuple(len(getattr(model, f"serial_blocks{i}")) for i in range(1, 5)) == v.serial_depths
    parallel = model.parallel_blocks
    assert (0 if parallel is None else len(parallel)) == v.parallel_depth
    assert model.patch_embed1.proj.kernel_size == (v.patch_size, v.patch_size)
    for i in range(4):
        block = getattr(model, f"serial_blocks{i + 1}")[0]
        assert block.mlp.fc1.out_features == v.mlp_hidden(i)
        assert block.factoratt_crpe.num_heads == v.num_heads
        assert (block.factoratt_crpe.qkv.bias is not None) == v.qkv_bias
        crpe = getattr(model, f"crpe{i + 1}")
        head_chs = v.embed_dims[i] // v.num_heads
        windows = tuple((c.kernel_size[0], c.in_channels // head_chs) for c in crpe.conv_list)
        assert windows == v.crpe_window


def test_layer_norm_epsilons_match_timm(pair):
    v, model = pair
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            expected = v.patch_norm_eps if name.startswith("patch_embed") else v.norm_eps
            assert module.eps == expected, name


def test_eval_settings_match_timm(pair):
    v, model = pair
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, v.img_size, v.img_size)
    assert cfg["crop_pct"] == v.crop_pct
    assert cfg.get("crop_mode", "center") == v.crop_mode
    assert cfg["interpolation"] == v.interpolation
