"""The benchmarks' own bookkeeping, checked against the model (their timings are not tested)."""

from __future__ import annotations

import importlib.util
import json
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
            seen[
                (
                    rows,
                    layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3],
                    layer.weight.shape[0],
                )
            ] += 1
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


def _common():
    spec = importlib.util.spec_from_file_location("_common", ROOT / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_children_get_none_of_the_thread_variables(monkeypatch):
    """bench_inference.py's default sides measure what a user gets who set nothing, whatever the
    shell running the benchmark has set; its tuned side gets the five variables."""
    common = _common()
    for var in common.THREAD_VARS:
        monkeypatch.setenv(var, "7")
    code = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {common.THREAD_VARS!r}}}))"
    installed = json.loads(common.run_child(code, mode="installed")[2])
    assert installed == dict.fromkeys(common.THREAD_VARS)
    tuned = json.loads(common.run_child(code, mode="tuned")[2])
    assert tuned == {k: common.TUNED_ENV.get(k) for k in common.THREAD_VARS}
    assert json.loads(common.run_child(code)[2]) == dict.fromkeys(common.THREAD_VARS, "7")
