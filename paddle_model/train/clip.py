"""Gradient clipping with torch's semantics (timm's ``dispatch_clip_grad``, modes 'norm', 'value').

``paddle.nn.ClipGradByGlobalNorm`` scales by ``clip / max(norm, clip)``; torch's
``clip_grad_norm_`` by ``min(max_norm / (norm + 1e-6), 1)``, always multiplied in. This is torch's.
"""

from __future__ import annotations

from collections.abc import Iterable

import paddle


def global_grad_norm(params: Iterable[paddle.Tensor], norm_type: float = 2.0) -> float:
    """The norm of the per-parameter gradient norms (torch's ``total_norm``)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = paddle.stack([paddle.linalg.norm(g.flatten(), p=norm_type) for g in grads])
    return float(paddle.linalg.norm(norms, p=norm_type))


@paddle.no_grad()
def clip_grad_norm_(params: Iterable[paddle.Tensor], max_norm: float, norm_type: float = 2.0) -> float:
    """Scale every gradient by ``min(max_norm / (total_norm + 1e-6), 1)``; returns total_norm."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norms = paddle.stack([paddle.linalg.norm(p.grad.flatten(), p=norm_type) for p in params])
    total = paddle.linalg.norm(norms, p=norm_type)
    coef = paddle.clip(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad.set_value(p.grad * coef.astype(p.grad.dtype))
    return float(total)


@paddle.no_grad()
def clip_grad_value_(params: Iterable[paddle.Tensor], clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] (torch's ``clip_grad_value_``)."""
    for p in params:
        if p.grad is not None:
            p.grad.set_value(paddle.clip(p.grad, -clip_value, clip_value))


def dispatch_clip_grad(params: Iterable[paddle.Tensor], value: float, mode: str = "norm") -> float | None:
    """timm's ``--clip-mode``: 'norm' (returns the norm before clipping) or 'value'."""
    if mode == "norm":
        return clip_grad_norm_(params, value)
    if mode == "value":
        clip_grad_value_(params, value)
        return None
    raise ValueError(f"clip mode must be 'norm' or 'value', got {mode!r}")


@paddle.no_grad()
def paddle_clip_grad_norm_(params: Iterable[paddle.Tensor], max_norm: float) -> float:
    """Paddle's own ``ClipGradByGlobalNorm`` rule, ``clip / max(norm, clip)``: not torch's. Kept for
    the harness's mutation test, which must see the difference."""
    params = [p for p in params if p.grad is not None]
    norms = paddle.stack([paddle.linalg.norm(p.grad.flatten()) for p in params])
    total = paddle.linalg.norm(norms)
    coef = max_norm / paddle.maximum(total, paddle.full_like(total, max_norm))
    for p in params:
        p.grad.set_value(p.grad * coef)
    return float(total)
