"""Drop-path (stochastic depth) whose per-sample masks can come from outside the model.

CoaT's blocks call their ``drop_path`` layer once per residual branch (twice per serial block,
six times per parallel block). :func:`install_drop_path` replaces each block's layer by an
:class:`InjectableDropPath` that asks a mask source for a [B] keep-mask of 0/1 per call,
keyed by the layer's name and the call's index within the step, so that two frameworks given
the same source drop the same samples. timm's arithmetic: ``x * (mask / keep)``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import paddle
import paddle.nn as nn

MaskSource = Callable[[str, int, int, float], np.ndarray]  # (layer, call index, batch, keep) -> [B]


class SeededMasks:
    """Masks from a seeded numpy stream: the mask of (step, layer, call) is
    ``default_rng([seed, step, crc32(layer), call]).random(B) < keep``; :meth:`next_step` advances."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.step = 0

    def next_step(self) -> None:
        self.step += 1

    def __call__(self, layer: str, call: int, batch: int, keep: float) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.step, zlib.crc32(layer.encode()), call])
        return (rng.random(batch) < keep).astype(np.float64)


class InjectableDropPath(nn.Layer):
    """Drop-path with rate ``p`` whose masks come from ``source`` (a :data:`MaskSource`), or from
    Paddle's RNG when ``source`` is None; identity in eval mode or at rate 0."""

    def __init__(self, p: float, name: str, source: MaskSource | None = None) -> None:
        super().__init__()
        self.p = p
        self.layer_name = name
        self.source = source
        self.calls = 0  # calls since the last reset_calls()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        if self.source is None:
            mask = paddle.bernoulli(paddle.full(shape, keep, dtype=x.dtype))
        else:
            drawn = self.source(self.layer_name, self.calls, x.shape[0], keep)
            mask = paddle.to_tensor(np.asarray(drawn).reshape(shape), dtype=x.dtype)
        self.calls += 1
        return x * (mask / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}, name={self.layer_name}"


def install_drop_path(model: nn.Layer, source: MaskSource | None, rate: float | None = None) -> list[str]:
    """Replace every block's ``drop_path`` layer of ``model`` by an :class:`InjectableDropPath`
    drawing from ``source`` (rate: the layer's own, or ``rate``); returns the layers' names."""
    names = []
    for name, layer in model.named_sublayers():
        old = getattr(layer, "drop_path", None)
        if isinstance(old, nn.Layer):
            full = f"{name}.drop_path"
            layer.drop_path = InjectableDropPath(old.p if rate is None else rate, full, source)
            names.append(full)
    return names


def reset_calls(model: nn.Layer) -> None:
    """Start a new step: every injectable layer counts its calls from 0 again."""
    for layer in model.sublayers():
        if isinstance(layer, InjectableDropPath):
            layer.calls = 0
