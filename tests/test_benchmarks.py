"""The benchmarks' own bookkeeping, checked against the model (their timings are not tested)."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import paddle
import pytest

import paddle_model

ROOT = Path(__file__).resolve().parents[1]


def _bench_products():
    spec = importlib.util.spec_from_file_location("bench_products", ROOT / "benchmarks" / "bench_products.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_bench_products_lists_every_product_of_a_forward_pass(name):
    """bench_products.py's (rows, in, out) counts, against the Linear layers and patch
    convolutions that one forward pass of the model actually runs (the classifier aside)."""
    batch = 2
    model = paddle_model.create_model(name)
    model.train()  # training runs every product through its layer, where hooks see it
    seen: Counter = Counter()

    def record(layer, inputs, output):
        if isinstance(layer, paddle.nn.Conv2D):  # a patch embedding: one row per patch
            rows = output.shape[0] * output.shape[2] * output.shape[3]
            seen[(rows, layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3],
                  layer.weight.shape[0])] += 1
        else:
            x = inputs[0]
            seen[(x.numel().item() // x.shape[-1], x.shape[-1], output.shape[-1])] += 1

    for layer_name, layer in model.named_sublayers():
        patch_conv = isinstance(layer, paddle.nn.Conv2D) and layer_name.startswith("patch_embed")
        if (isinstance(layer, paddle.nn.Linear) and layer_name != "head") or patch_conv:
            layer.register_forward_post_hook(record)
    size = model.variant.img_size
    model(paddle.randn([batch, 3, size, size]))
    assert seen == _bench_products().pass_products(name, batch)
