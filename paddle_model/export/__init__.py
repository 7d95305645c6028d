"""Export a CoaT for deployment: a ``paddle.jit.save`` model for Paddle Inference.

    python -m paddle_model.export coat_lite_small --weights coat_lite_small.pdparams out/coat_lite_small

writes ``out/coat_lite_small.json`` and ``.pdiparams`` (Paddle Inference, ``paddle.jit.load``),
with dynamic batch, height and width and Paddle's own ops only. ``--kernels`` puts the compiled
ops of :data:`paddle_model.kernels.OPS` into the graph instead, for a fixed input size
(``--size``, default the variant's, at least its ``min_input_size``); such a model runs only
where those ops are built and registered, which :func:`create_predictor` does. ``--onnx`` also writes
``out/coat_lite_small.onnx`` through paddle2onnx (dynamic batch, height and width) and checks it
in onnxruntime against the eager model on seeded inputs; above 1e-5 of the largest logit the
``.onnx`` is not written and the exit code is 1.

Complete or nothing: the files are written beside the destination and moved into place once all
are written and read back; missing parent folders are created; existing files are replaced only
with ``--force`` (``force=True``).

The parts: :mod:`.paddle` traces and saves, :mod:`.onnx` converts, mends and checks in
onnxruntime, :mod:`.predictor` builds the Paddle Inference predictor, :mod:`.cli` is the command;
:mod:`.files` stages and publishes, :mod:`.capture` keeps C++ log noise from the user.
"""

from __future__ import annotations

from .cli import main
from .onnx import (
    ONNX_CHECK_SIZE,
    ONNX_OPSET,
    ONNX_PACKAGES,
    ONNX_TOLERANCE,
    check_onnx,
    drop_unused_initializers,
    export_onnx,
    repair_pad_values,
    require_onnx,
)
from .paddle import export, kernel_ops, uses_kernels
from .predictor import create_predictor

__all__ = [
    "ONNX_CHECK_SIZE",
    "ONNX_OPSET",
    "ONNX_PACKAGES",
    "ONNX_TOLERANCE",
    "check_onnx",
    "create_predictor",
    "drop_unused_initializers",
    "export",
    "export_onnx",
    "kernel_ops",
    "main",
    "repair_pad_values",
    "require_onnx",
    "uses_kernels",
]
