"""The compiled depthwise convolution: built here, equal to torch's, and optional."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as F

from paddle_model import kernels

from .conftest import ROOT


def test_kernel_builds_on_this_machine():
    assert kernels.depthwise_conv2d() is not None, "the C++ depthwise kernel failed to build"


@pytest.mark.parametrize("batch, channels, height, width, kernel", [
    (1, 152, 56, 59, 3), (2, 48, 28, 28, 5), (2, 60, 14, 9, 7), (3, 8, 1, 1, 7), (1, 16, 2, 5, 7),
])
def test_kernel_equals_torch_depthwise_conv(batch, channels, height, width, kernel):
    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    w = rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                        padding=kernel // 2, groups=channels).numpy()
    got = kernels.depthwise_conv2d()(paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(b)).numpy()
    assert float(np.abs(got - expected).max()) <= 1e-6 * float(np.abs(expected).max())


def test_model_without_the_kernel_gives_the_same_outputs(tmp_path):
    """COAT_PADDLE_KERNELS=0 (as where no compiler exists) falls back to Paddle's convolution."""
    code = (
        "import sys, numpy as np, paddle, paddle_model\n"
        "paddle.seed(0)\n"
        "m = paddle_model.create_model('coat_tiny', num_classes=10); m.eval()\n"
        "x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype('float32'))\n"
        "with paddle.no_grad():\n"
        "    np.save(sys.argv[1], m(x).numpy())\n"
    )
    outputs = []
    for flag in ("1", "0"):
        path = tmp_path / f"out{flag}.npy"
        env = {"COAT_PADDLE_KERNELS": flag, "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT, env=env,
                       capture_output=True)
        outputs.append(np.load(path))
    with_kernel, without = outputs
    assert float(np.abs(with_kernel - without).max()) <= 1e-5 * float(np.abs(without).max())
