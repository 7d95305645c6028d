"""The declared state-dict layout is exactly what the Paddle model and timm's model hold."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

import paddle_model
from paddle_model.layout import coat_layout
from paddle_model.variants import VARIANTS
from reference.timm_model import build_timm


@pytest.mark.parametrize("name", list(VARIANTS))
def test_paddle_and_timm_state_dicts_follow_the_layout(name):
    layout = coat_layout(VARIANTS[name])
    model = paddle_model.create_model(name)
    reference = build_timm(name)

    ours = model.state_dict()
    theirs = reference.state_dict()
    assert list(ours) == list(layout.order)
    assert list(theirs) == list(layout.order)
    for key in layout.order:
        spec = layout.spec(key)
        assert tuple(ours[key].shape) == spec.shape, key
        assert tuple(theirs[key].shape) == spec.torch_shape, key
    # aliases are one tensor on both sides
    for alias, canonical in layout.aliases.items():
        assert ours[alias] is ours[canonical], alias
        assert theirs[alias].data_ptr() == theirs[canonical].data_ptr(), alias


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_count_equals_timm(name):
    model = paddle_model.create_model(name)
    reference = build_timm(name)
    ours = sum(int(np.prod(p.shape)) for p in model.parameters())
    theirs = sum(p.numel() for p in reference.parameters())
    assert ours == theirs == coat_layout(VARIANTS[name]).num_params()


@pytest.mark.parametrize("name", ["coat_tiny", "coat_lite_tiny"])
def test_transposed_keys_are_exactly_the_linear_weights(name):
    layout = coat_layout(VARIANTS[name])
    model = paddle_model.create_model(name)
    linear_weights = {
        f"{prefix}.weight"
        for prefix, layer in model.named_sublayers(include_self=False)
        if isinstance(layer, paddle.nn.Linear)
    }
    transposed = {k for k, spec in layout.tensors.items() if spec.transposed}
    assert transposed == linear_weights


def test_backbone_layout_has_no_head():
    layout = coat_layout(VARIANTS["coat_small"], head=False)
    model = paddle_model.create_model("coat_small", return_interm_layers=True)
    assert list(model.state_dict()) == list(layout.order)
    assert not any(k.startswith(("norm", "aggregate", "head")) for k in layout.order)
