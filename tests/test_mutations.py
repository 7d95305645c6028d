"""The harness has teeth: each single-tensor mistake a port can make fails parity, at its place."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddle_model.coat import Mlp
from paddle_model.variants import VARIANTS
from reference.parity import candidate_models, compare_models, reference_models, seeded_input

RTOL = 1e-5


@pytest.fixture(scope="module")
def pair(converted):
    """``pair(variant)`` -> (timm model, converted .pdparams path), made once per variant."""
    cache = {}

    def get(name):
        if name not in cache:
            v = VARIANTS[name]
            src, dst = converted(name)
            cache[name] = (reference_models(src, v, (v.img_size, v.img_size))[0], dst)
        return cache[name]

    return get


def _set(param, value):
    param.set_value(np.ascontiguousarray(value))


def transpose_square_proj(model):
    p = model.serial_blocks2[1].factoratt_crpe.proj.weight
    _set(p, p.numpy().T)


def swap_q_and_k(model):
    qkv = model.serial_blocks3[0].factoratt_crpe.qkv  # Paddle weight [C, 3C]: q | k | v columns
    c = qkv.weight.shape[0]
    w, b = qkv.weight.numpy(), qkv.bias.numpy()
    order = np.r_[c : 2 * c, 0:c, 2 * c : 3 * c]
    _set(qkv.weight, w[:, order])
    _set(qkv.bias, b[order])


def swap_crpe_convs(model):
    a, b = model.crpe2.conv_list[0].weight, model.crpe3.conv_list[0].weight  # same shape in coat_tiny
    wa, wb = a.numpy(), b.numpy()
    _set(a, wb)
    _set(b, wa)


def untie_mlp3(model):
    """A port that builds mlp3 as its own layer and loads only mlp2 into it."""
    block = model.parallel_blocks[0]
    fresh = Mlp(block.mlp2.fc1.weight.shape[0], block.mlp2.fc1.weight.shape[1])
    block.mlp3 = fresh


def swap_cls_tokens(model):
    a, b = model.cls_token2.numpy(), model.cls_token3.numpy()
    _set(model.cls_token2, b)
    _set(model.cls_token3, a)


def paddle_default_epsilon(model):
    """Block LayerNorms left at Paddle's default epsilon 1e-5 instead of timm's 1e-6."""
    for name, layer in model.named_sublayers():
        if isinstance(layer, paddle.nn.LayerNorm) and not name.startswith("patch_embed"):
            layer.eps = 1e-5


def block_epsilon_everywhere(model):
    """Patch-embed LayerNorms given the blocks' 1e-6 instead of torch's default 1e-5."""
    for name, layer in model.named_sublayers():
        if isinstance(layer, paddle.nn.LayerNorm) and name.startswith("patch_embed"):
            layer.eps = 1e-6


@pytest.mark.parametrize(
    "name, mutate, first",
    [
        ("coat_lite_tiny", transpose_square_proj, "serial_blocks2.1"),
        ("coat_lite_tiny", swap_q_and_k, "serial_blocks3.0"),
        ("coat_tiny", swap_crpe_convs, "serial_blocks2.0"),
        ("coat_tiny", untie_mlp3, "parallel_blocks.0/x3"),
        ("coat_tiny", swap_cls_tokens, "serial_blocks2.0"),
        ("coat_lite_tiny", paddle_default_epsilon, "serial_blocks1.0"),
        ("coat_tiny", paddle_default_epsilon, "serial_blocks1.0"),
        ("coat_lite_tiny", block_epsilon_everywhere, "patch_embed1"),
    ],
)
def test_single_tensor_mistake_fails_parity_where_it_is(pair, name, mutate, first):
    reference, dst = pair(name)
    v = VARIANTS[name]
    x = seeded_input(2, v.img_size, seed=4)
    candidate, _ = candidate_models(dst, v, 1000)
    assert compare_models(reference, candidate, x, name, tolerance=RTOL).ok  # intact first
    mutate(candidate)
    report = compare_models(reference, candidate, x, name, tolerance=RTOL)
    assert not report.ok
    assert report.first_divergence == first, report.table()
