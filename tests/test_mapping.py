"""The mapping engine and the checkpoint reader on their own, on small hand-built state dicts.

The end-to-end tests convert real layouts of all eight variants; these pin each rule of
``converter.mapping`` (rename, drop, tie, the first match deciding), every kind of misfit,
the Paddle-layout direction that ``converter.reverse`` fits with the same engine, and what
``converter.readers`` makes of the containers a ``.pth`` file may hold. The variants here are
tiny (dims 8..24, one block per stage) so that every state dict is a few dozen keys.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from converter.detect import detect_variant, plan_for
from converter.errors import ConversionError
from converter.layout import coat_layout
from converter.lazy import Lazy
from converter.mapping import DROP, RENAME, RULES, Rule, apply_plan, plan_mapping
from converter.reverse import paddle_layout_for, to_torch_layout
from converter.variants import VARIANTS, CoatVariant

LITE = CoatVariant(
    "lite", (8, 16, 16, 24), (1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), num_heads=2, crpe_window=((3, 1), (5, 1))
)
COAT = dataclasses.replace(LITE, name="coat", embed_dims=(8, 8, 8, 8), parallel_depth=1)


def torch_shapes(
    variant: CoatVariant, num_classes: int = 5, aliases: bool = True, official_norms: bool = False
) -> dict[str, tuple[int, ...]]:
    """A PyTorch state dict's shapes for ``variant``: timm's keys, optionally the official
    file's unused norms too."""
    layout = coat_layout(variant, num_classes=num_classes)
    keys = layout.order if aliases else tuple(layout.tensors)
    shapes = {k: layout.spec(k).torch_shape for k in keys}
    if official_norms:
        dims = variant.embed_dims
        for i, name in ((0, "norm1"), (1, "norm2"), (2, "norm3")):
            if name == "norm1" or variant.is_lite:
                shapes |= {f"{name}.weight": (dims[i],), f"{name}.bias": (dims[i],)}
    return shapes


def lazy_state(shapes: dict[str, tuple[int, ...]], dtype=np.float32) -> dict[str, Lazy]:
    """Distinct values per canonical tensor; an alias holds its canonical tensor's values."""
    layout = coat_layout(LITE if "parallel_blocks.0.norm12.weight" not in shapes else COAT, 5)
    arrays: dict[str, np.ndarray] = {}
    for i, (key, shape) in enumerate(sorted(shapes.items())):
        canonical = layout.aliases.get(key, key)
        if canonical not in arrays:
            arrays[canonical] = np.arange(np.prod(shape), dtype=np.float64).reshape(shape).astype(dtype) + i
        arrays[key] = arrays[canonical]
    return {k: Lazy(a.shape, a.dtype, lambda a=a: a) for k, a in arrays.items() if k in shapes}


# ---- rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [LITE, COAT], ids=["lite", "coat"])
def test_canonical_keys_keep_their_names_and_aliases_are_tied(variant):
    plan = plan_mapping(torch_shapes(variant), variant)
    layout = coat_layout(variant, num_classes=5)
    assert plan.problems == [] and plan.misfits == 0
    assert plan.renamed == {k: k for k in layout.tensors}
    assert plan.tied == layout.aliases
    assert plan.dropped == {}


def test_each_tie_rule_names_the_shared_tensor():
    tied = plan_mapping(torch_shapes(COAT), COAT).tied
    assert tied["serial_blocks1.0.cpe.proj.weight"] == "cpe1.proj.weight"
    assert tied["serial_blocks2.0.factoratt_crpe.crpe.conv_list.1.bias"] == "crpe2.conv_list.1.bias"
    assert tied["parallel_blocks.0.factoratt_crpe3.crpe.conv_list.0.weight"] == "crpe3.conv_list.0.weight"
    assert tied["parallel_blocks.0.mlp3.fc1.weight"] == "parallel_blocks.0.mlp2.fc1.weight"
    assert tied["parallel_blocks.0.mlp4.fc2.bias"] == "parallel_blocks.0.mlp2.fc2.bias"


def test_unused_official_norms_are_dropped_with_their_reason():
    lite = plan_mapping(torch_shapes(LITE, official_norms=True), LITE)
    assert lite.problems == []
    assert sorted(lite.dropped) == [
        "norm1.bias",
        "norm1.weight",
        "norm2.bias",
        "norm2.weight",
        "norm3.bias",
        "norm3.weight",
    ]
    assert lite.dropped["norm1.weight"].startswith("norm1: built but unused")
    assert lite.dropped["norm3.bias"].startswith("norm2/norm3: unused by CoaT-Lite")
    coat = plan_mapping(torch_shapes(COAT, official_norms=True), COAT)  # CoaT uses norm2, norm3
    assert sorted(coat.dropped) == ["norm1.bias", "norm1.weight"]
    assert coat.renamed["norm2.weight"] == "norm2.weight"


def test_the_first_matching_rule_decides():
    rules = (Rule(r"cls_token1", DROP, reason="first"), Rule(r"cls_token1", RENAME), *RULES)
    plan = plan_mapping(torch_shapes(LITE), LITE, rules=rules)
    assert plan.dropped == {"cls_token1": "first"}
    assert plan.problems == ["1 keys missing (cls_token1)"] and plan.misfits == 1


def test_a_rename_template_maps_other_names_onto_the_layout():
    rules = (Rule(r"encoder\.(serial_blocks.+)", RENAME, r"\1"), *RULES)
    shapes = {
        (f"encoder.{k}" if k.startswith("serial") else k): s
        for k, s in torch_shapes(LITE, aliases=False).items()
    }
    plan = plan_mapping(shapes, LITE, rules=rules)
    assert plan.problems == []
    assert plan.renamed["encoder.serial_blocks3.0.mlp.fc2.bias"] == "serial_blocks3.0.mlp.fc2.bias"


def test_a_rule_table_without_a_catch_all_is_refused_by_key():
    with pytest.raises(ConversionError, match="cls_token1: no mapping rule matches it"):
        plan_mapping({"cls_token1": (1, 1, 8)}, LITE, rules=(Rule(r"norm1\..*", DROP, reason="x"),))


# ---- misfits ----------------------------------------------------------------------------


def test_missing_unexpected_mis_shaped_and_duplicated_keys_are_each_counted():
    shapes = torch_shapes(LITE)
    del shapes["cls_token2"], shapes["norm4.bias"]  # missing
    shapes["serial_blocks1.7.cpe.proj.weight"] = (8, 1, 3, 3)  # a tie for a block that does not exist
    shapes["extra.weight"] = (3,)  # unexpected
    shapes["head.bias"] = (6,)  # mis-shaped
    plan = plan_mapping(shapes, LITE)
    assert plan.problems == [
        "2 keys missing (cls_token2, norm4.bias)",
        "2 unexpected keys (extra.weight, serial_blocks1.7.cpe.proj.weight)",
        "1 shape mismatches (head.bias is [6], expected [5])",
    ]
    assert plan.misfits == 5
    twice = plan_mapping(
        torch_shapes(LITE, aliases=False) | {"copy.cls_token1": (1, 1, 8)},
        LITE,
        rules=(Rule(r"copy\.(.+)", RENAME, r"\1"), *RULES),
    )
    assert twice.problems == ["keys given twice (cls_token1)"] and twice.misfits == 1


def test_an_untransposed_linear_weight_is_a_shape_mismatch():
    shapes = torch_shapes(LITE)
    shapes["serial_blocks1.0.mlp.fc1.weight"] = (8, 16)  # Paddle's [in, out] where torch has [out, in]
    plan = plan_mapping(shapes, LITE)
    assert plan.problems == [
        "1 shape mismatches (serial_blocks1.0.mlp.fc1.weight is [8, 16], expected [16, 8])"
    ]
    with pytest.raises(ConversionError, match=r"x\.pth does not fit lite: 1 shape mismatches"):
        plan.check("x.pth")


def test_the_classifier_size_and_a_headless_backbone_come_from_the_source():
    assert plan_mapping(torch_shapes(LITE, num_classes=11), LITE).layout.tensors["head.bias"].shape == (11,)
    backbone = {k: s for k, s in torch_shapes(LITE).items() if not k.startswith(("norm4", "head"))}
    plan = plan_mapping(backbone, LITE)
    assert plan.problems == [] and "norm4.weight" not in plan.layout.tensors


# ---- the Paddle direction, with the same engine -----------------------------------------


def paddle_shapes(variant: CoatVariant, num_classes: int = 5) -> dict[str, tuple[int, ...]]:
    layout = coat_layout(variant, num_classes=num_classes)
    return {k: layout.spec(k).shape for k in layout.order}


def test_paddle_layout_fits_with_paddle_shapes_and_every_key_as_named():
    plan = plan_mapping(paddle_shapes(COAT, num_classes=7), COAT, paddle=True)
    assert plan.problems == [] and plan.layout.tensors["head.weight"].shape == (8, 7)
    assert plan.tied == coat_layout(COAT).aliases and plan.dropped == {}
    torch_side = plan_mapping(paddle_shapes(COAT, num_classes=7), COAT)  # read as torch: Linear misfits
    assert any("shape mismatches" in p for p in torch_side.problems)


def test_paddle_layout_drops_nothing():
    shapes = paddle_shapes(LITE) | {"norm1.weight": (8,), "norm1.bias": (8,)}
    plan = plan_mapping(shapes, LITE, paddle=True)
    assert plan.problems == ["2 unexpected keys (norm1.bias, norm1.weight)"]


def test_reverse_detects_real_variants_and_writes_torch_shapes():
    layout = coat_layout(VARIANTS["coat_lite_small"])
    shapes = {k: layout.spec(k).shape for k in layout.order}
    v, fitted = paddle_layout_for(shapes, None, "w.pdparams", "w.pdparams")
    assert v.name == "coat_lite_small" and fitted == layout
    with pytest.raises(ConversionError, match="fit coat_lite_medium and coat_lite_medium_384 alike"):
        medium = coat_layout(VARIANTS["coat_lite_medium"])
        paddle_layout_for({k: medium.spec(k).shape for k in medium.order}, None, "w.pdparams")
    state = {k: np.zeros(s, np.float32) for k, s in paddle_shapes(LITE).items()}
    state["head.weight"] = np.arange(120, dtype=np.float32).reshape(24, 5)
    back = to_torch_layout(state, coat_layout(LITE, 5), "w.pdparams")
    assert back["head.weight"].shape == (5, 24)
    assert np.array_equal(back["head.weight"], state["head.weight"].T)
    assert back["serial_blocks1.0.cpe.proj.weight"] is back["cpe1.proj.weight"]


def test_detection_tells_variants_apart_and_the_file_name_breaks_a_tie():
    for name in ("coat_tiny", "coat_lite_mini"):
        layout = coat_layout(VARIANTS[name])
        shapes = {k: layout.spec(k).torch_shape for k in layout.order}
        assert detect_variant(shapes).variant.name == name
    medium = coat_layout(VARIANTS["coat_lite_medium"])
    shapes = {k: medium.spec(k).torch_shape for k in medium.order}
    assert (
        detect_variant(shapes, name_hint="coat_lite_medium_384_f9129688.pth").variant.name
        == "coat_lite_medium_384"
    )
    with pytest.raises(ConversionError, match="the tensors fit no CoaT variant; closest is coat_lite_mini"):
        layout = coat_layout(VARIANTS["coat_lite_mini"])
        detect_variant({k: layout.spec(k).torch_shape for k in layout.order if k != "cls_token1"})
    with pytest.raises(ConversionError, match="not a CoaT checkpoint"):
        plan_for({"fc.weight": (2, 2)}, None, "x.pth")


# ---- applying a plan --------------------------------------------------------------------


def test_apply_transposes_linear_weights_only_and_aliases_share_one_tensor():
    shapes = torch_shapes(LITE)
    source = lazy_state(shapes)
    out, report = apply_plan(plan_mapping(shapes, LITE), source)
    assert list(out) == list(coat_layout(LITE, 5).order)
    fc1 = source["serial_blocks1.0.mlp.fc1.weight"].load()
    assert np.array_equal(out["serial_blocks1.0.mlp.fc1.weight"].load(), fc1.T)
    assert np.array_equal(out["patch_embed1.proj.weight"].load(), source["patch_embed1.proj.weight"].load())
    assert out["serial_blocks1.0.cpe.proj.weight"] is out["cpe1.proj.weight"]
    assert "serial_blocks1.0.mlp.fc1.weight" in report.transposed
    assert "cpe1.proj.weight" not in report.transposed
    assert report.ties_checked == sorted(coat_layout(LITE).aliases) and report.ties_filled == []


def test_apply_fills_absent_aliases_and_checks_present_ones():
    shapes = torch_shapes(LITE, aliases=False)
    out, report = apply_plan(plan_mapping(shapes, LITE), lazy_state(shapes))
    assert report.ties_filled == sorted(coat_layout(LITE).aliases) and report.ties_checked == []
    shapes = torch_shapes(LITE)
    source = lazy_state(shapes)
    alias = "serial_blocks2.0.factoratt_crpe.crpe.conv_list.0.weight"
    other = source[alias].load() + 1
    source[alias] = Lazy(other.shape, other.dtype, lambda: other)
    with pytest.raises(ConversionError, match=f"{alias} should be the same tensor as crpe2.conv_list.0"):
        apply_plan(plan_mapping(shapes, LITE), source, origin="x.pth")


def test_apply_refuses_integer_tensors_and_non_finite_values_unless_asked():
    shapes = torch_shapes(LITE, aliases=False)
    source = lazy_state(shapes)
    plan = plan_mapping(shapes, LITE)
    ints = np.zeros((1, 1, 8), np.int64)
    with pytest.raises(ConversionError, match="cls_token1 has dtype int64, expected a float tensor"):
        apply_plan(plan, {**source, "cls_token1": Lazy(ints.shape, ints.dtype, lambda: ints)})
    nan = np.full((1, 1, 8), np.nan, np.float32)
    with_nan = {**source, "cls_token1": Lazy(nan.shape, nan.dtype, lambda: nan)}
    out, _ = apply_plan(plan, with_nan, origin="x.pth")
    with pytest.raises(ConversionError, match="x.pth: cls_token1 contains NaN or Inf values"):
        out["cls_token1"].load()  # checked when the tensor is read: conversion streams
    out, _ = apply_plan(plan, with_nan, allow_nonfinite=True)
    assert np.isnan(out["cls_token1"].load()).all()


def test_apply_casts_only_when_asked():
    shapes = torch_shapes(LITE, aliases=False)
    out, _ = apply_plan(plan_mapping(shapes, LITE), lazy_state(shapes, np.float16))
    assert out["head.weight"].dtype == np.float16 and out["head.weight"].load().dtype == np.float16
    out, _ = apply_plan(plan_mapping(shapes, LITE), lazy_state(shapes, np.float16), dtype=np.dtype("float32"))
    assert out["head.weight"].load().dtype == np.float32


# ---- reading .pth containers ------------------------------------------------------------


@pytest.fixture(scope="module")
def small_state():
    import torch

    shared = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return {"a.weight": shared, "a.alias": shared, "b.bias": torch.ones(3, dtype=torch.bfloat16)}


@pytest.mark.parametrize(
    "container, found",
    [
        (lambda s: s, "bare state dict"),
        (lambda s: {"model": s, "epoch": 3}, "'model' entry"),
        (
            lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
            "'state_dict' entry, prefix module. removed",
        ),
    ],
)
def test_reader_finds_the_state_dict_in_each_container(small_state, tmp_path, container, found):
    import torch

    from converter.readers import read_checkpoint

    torch.save(container(small_state), tmp_path / "x.pth")
    checkpoint = read_checkpoint(tmp_path / "x.pth")
    assert checkpoint.container == f"torch zip, {found}"
    assert sorted(checkpoint.state) == ["a.alias", "a.weight", "b.bias"]
    assert checkpoint.state["a.alias"].same_as(checkpoint.state["a.weight"])  # one storage, known unread
    arrays = checkpoint.arrays()
    assert np.array_equal(arrays["a.weight"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert arrays["b.bias"].dtype.name == "bfloat16" and arrays["b.bias"].tolist() == [1, 1, 1]


def test_reader_takes_ema_weights_only_when_asked(small_state, tmp_path):
    import torch

    from converter.readers import read_checkpoint

    ema = {k: v * 2 for k, v in small_state.items()}
    torch.save({"model": small_state, "model_ema": ema}, tmp_path / "x.pth")
    assert read_checkpoint(tmp_path / "x.pth").container == "torch zip, 'model' entry"
    picked = read_checkpoint(tmp_path / "x.pth", ema=True)
    assert picked.container == "torch zip, 'model_ema' entry"
    assert picked.arrays()["a.weight"][1, 2] == 10.0
    torch.save({"model": small_state}, tmp_path / "plain.pth")
    with pytest.raises(ConversionError, match="--ema was given but the checkpoint has no EMA weights"):
        read_checkpoint(tmp_path / "plain.pth", ema=True)


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda torch: [1, 2], "holds a list, not a state dict or a checkpoint dict"),
        (lambda torch: {"optimizer": {"lr": 0.1}}, "found no state dict; expected tensors at the top level"),
    ],
)
def test_reader_refuses_what_holds_no_state_dict(tmp_path, content, message):
    import torch

    from converter.readers import read_checkpoint

    torch.save(content(torch), tmp_path / "x.pth")
    with pytest.raises(ConversionError, match=message):
        read_checkpoint(tmp_path / "x.pth")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file; check the path"),
        (lambda p: p.mkdir(), "is a directory; give the checkpoint file itself"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (
            lambda p: p.write_bytes(b"\x80\x02}q\x00."),
            r"neither a PyTorch checkpoint \(zip or legacy format\) nor a .safetensors file",
        ),
    ],
)
def test_reader_refuses_what_is_not_a_checkpoint_file(tmp_path, make, message):
    from converter.readers import read_checkpoint

    path = tmp_path / "x.pth"
    make(path)
    with pytest.raises(ConversionError, match=message):
        read_checkpoint(path)
