"""Fine-tuning in Paddle starts where PyTorch would: every parameter's gradient agrees."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

import paddle_model
from paddle_model.layout import coat_layout
from paddle_model.variants import VARIANTS
from reference.parity import seeded_input
from reference.timm_model import timm_from_checkpoint

GRAD_RTOL = 1e-4


def _torch_grads(model, x, labels):
    model.train()
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(labels))
    loss.backward()
    return loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}


def _paddle_grads(model, x, labels):
    model.train()
    loss = paddle.nn.functional.cross_entropy(model(paddle.to_tensor(x)), paddle.to_tensor(labels))
    loss.backward()
    return float(loss), {n: p.grad.numpy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["coat_tiny", "coat_lite_tiny"])
def test_gradients_of_every_parameter_agree(name, converted):
    src, dst = converted(name)
    reference = timm_from_checkpoint(src, name)  # dropout and drop_path rates are 0
    model = paddle_model.create_model(name, pretrained=dst)
    x = seeded_input(2, 224, seed=5)
    labels = np.array([3, 917], dtype=np.int64)

    ref_loss, ref_grads = _torch_grads(reference, x, labels)
    loss, grads = _paddle_grads(model, x, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-5)

    layout = coat_layout(VARIANTS[name])
    assert set(grads) == set(ref_grads) == set(layout.tensors)  # each shared tensor once
    worst = []
    for key, ref in ref_grads.items():
        got = grads[key].T if layout.tensors[key].transposed else grads[key]
        rel = float(np.abs(got - ref).max() / np.abs(ref).max())
        worst.append((rel, key))
        assert rel <= GRAD_RTOL, f"{key}: gradient max|d|/max|ref| {rel:.2e}"
    assert max(worst)[0] > 0  # the two really were computed apart
