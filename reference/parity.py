"""Run timm's model and the Paddle model on identical inputs and compare their outputs."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from paddle_model.variants import CoatVariant, get_variant

DEFAULT_RTOL = 1e-5  # max |delta| / max |reference| allowed on fp32 logits


@dataclass
class Parity:
    """How far two outputs are apart."""

    name: str
    max_abs: float
    max_rel: float  # max |delta| / max |reference|
    ref_max: float
    top1_agree: float  # fraction of rows whose argmax agrees (logits only)
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_rel)) and self.max_rel <= self.tolerance

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return (f"{self.name}: max|d| {self.max_abs:.3e}, max|d|/max|ref| {self.max_rel:.3e} "
                f"(tolerance {self.tolerance:.0e}), top-1 agreement {self.top1_agree:.0%}: {verdict}")

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(name: str, reference: np.ndarray, candidate: np.ndarray,
            tolerance: float = DEFAULT_RTOL) -> Parity:
    """Compare ``candidate`` against ``reference`` (same shape)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"{name}: shapes differ, {reference.shape} vs {candidate.shape}")
    delta = np.abs(reference - candidate)
    max_abs = float(delta.max()) if delta.size else 0.0
    ref_max = float(np.abs(reference).max()) if reference.size else 0.0
    max_rel = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else float("inf"))
    if np.isnan(candidate).any() or np.isnan(reference).any():
        max_rel = float("nan")
    top1 = float("nan")
    if reference.ndim == 2:
        top1 = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    return Parity(name, max_abs, max_rel, ref_max, top1, tolerance)


def seeded_input(batch: int, size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """A deterministic NCHW float32 batch, roughly the scale of normalised images."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def paddle_logits(model, x: np.ndarray) -> np.ndarray:
    import paddle

    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def verify_conversion(src: str | Path, dst: str | Path, variant: str | CoatVariant,
                      batch: int = 2, seed: int = 0, tolerance: float = DEFAULT_RTOL,
                      ema: bool = False) -> Parity:
    """Logit parity of timm's model with ``src`` against the Paddle model with ``dst``.

    Runs both on the same seeded batch at the variant's default input size.
    """
    from paddle_model.factory import create_model

    from .timm_model import timm_from_checkpoint

    v = get_variant(variant) if isinstance(variant, str) else variant
    reference = timm_from_checkpoint(src, v, ema=ema)
    candidate = create_model(v.name, pretrained=dst, num_classes=reference.num_classes)
    x = seeded_input(batch, v.img_size, seed)
    return compare("logits", torch_logits(reference, x), paddle_logits(candidate, x), tolerance)
