"""Mixed precision behind one option: ``None`` (float32, the default), ``"bf16"`` or ``"fp16"``.

Through ``paddle.amp``: ``auto_cast(level="O1")`` runs the white-listed ops (matmul, conv) in the
low precision and keeps the rest in float32; fp16 also needs a ``GradScaler`` (dynamic loss
scaling) so that small gradients do not underflow; bf16 has float32's range and needs none.
``paddle.amp`` has no effect on CPU (it warns and runs float32), so asking for it there is
refused rather than silently ignored.
"""

from __future__ import annotations

import contextlib

import paddle

from ..errors import CoatError

AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def autocast(amp: str | None):
    """The context a forward pass and its loss run in: a no-op for ``None``."""
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {amp!r}")
    check_device(amp)
    return paddle.amp.auto_cast(enable=True, level="O1", dtype=AMP_DTYPES[amp])


def check_device(amp: str) -> None:
    """Refuse mixed precision where ``paddle.amp`` would silently run float32 (the CPU)."""
    device = paddle.device.get_device()
    if device == "cpu":
        raise CoatError(
            f"--amp {amp} needs a GPU: on the CPU paddle.amp has no effect (it would train in float32); "
            "drop --amp to train in float32"
        )


def grad_scaler(amp: str | None, init_loss_scaling: float = 2.0**16) -> paddle.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 (torch's ``GradScaler`` defaults), else None."""
    if amp != "fp16":
        return None
    check_device(amp)
    return paddle.amp.GradScaler(init_loss_scaling=init_loss_scaling, incr_every_n_steps=2000)
