"""Checkpoint in, Paddle weights out: read, detect, map, check, write."""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from paddle_model.variants import CoatVariant, get_variant
from paddle_model.weights import BFLOAT16

from .detect import plan_for
from .errors import ConversionError
from .mapping import MappingReport, apply_plan, check_declared_ties
from .readers import read_checkpoint
from .writers import check_destination, write_state_dict


@dataclass
class ConversionResult:
    variant: str
    source: str
    destination: str
    container: str
    dtype: str
    num_classes: int
    source_sha256: str
    mapping: MappingReport
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        m = self.mapping
        reasons = sorted(set(m.dropped.values()))
        lines = [
            f"{self.source} -> {self.destination}",
            f"  variant      {self.variant} ({self.num_classes} classes), source {self.container}",
            f"  written      {m.written} keys ({m.tensors} tensors, {m.written - m.tensors} aliases), {self.dtype}",
            f"  transposed   {len(m.transposed)} Linear weights",
            f"  dropped      {len(m.dropped)} keys" + "".join(f"\n    - {r}" for r in reasons),
            f"  ties         {len(m.ties_checked)} checked equal, {len(m.ties_filled)} filled",
        ]
        return "\n".join(lines)


CAST_DTYPES = ("float32", "float16", "bfloat16")


def _cast_dtype(name: str | None) -> np.dtype | None:
    if name is None:
        return None
    if name not in CAST_DTYPES:
        raise ConversionError(f"unknown dtype {name!r}; choose one of {', '.join(CAST_DTYPES)}")
    return BFLOAT16 if name == "bfloat16" else np.dtype(name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_checkpoint(
        src: str | Path,
        dst: str | Path,
        variant: str | CoatVariant | None = None,
        force: bool = False,
        ema: bool = False,
        allow_nonfinite: bool = False,
        dtype: str | None = None,
) -> ConversionResult:
    """Convert the PyTorch CoaT checkpoint ``src`` into Paddle weights at ``dst``.

    The variant is detected from the tensors unless given; tensors keep their dtype unless
    ``dtype`` ("float32", "float16" or "bfloat16") casts them. Raises a
    :class:`~paddle_model.errors.CoatError` (nothing written) when anything does not fit.
    """
    src, dst = Path(src), Path(dst)
    if isinstance(variant, str):
        try:
            variant = get_variant(variant)
        except KeyError as e:
            raise ConversionError(str(e.args[0])) from None
    check_destination(dst, force)
    t0 = time.perf_counter()
    checkpoint = read_checkpoint(src, ema=ema)
    t1 = time.perf_counter()
    shapes = {k: tuple(v.shape) for k, v in checkpoint.state.items()}
    plan = plan_for(shapes, variant, origin=str(src), name_hint=src.name)
    check_declared_ties(plan, checkpoint.declared_ties, str(src))
    state, report = apply_plan(plan, checkpoint.state, origin=str(src),
                               allow_nonfinite=allow_nonfinite, dtype=_cast_dtype(dtype))
    dtypes = sorted({str(a.dtype) for a in state.values()})
    t2 = time.perf_counter()
    metadata = {"format": "paddle", "variant": plan.variant.name}
    write_state_dict(state, dst, plan.layout.aliases, metadata)
    t3 = time.perf_counter()
    head = state.get("head.weight")
    return ConversionResult(
        variant=plan.variant.name,
        source=str(src),
        destination=str(dst),
        container=checkpoint.container,
        dtype="/".join(dtypes),
        num_classes=0 if head is None else int(head.shape[1]),
        source_sha256=_sha256(src),
        mapping=report,
        timings={"read_s": t1 - t0, "map_s": t2 - t1, "write_s": t3 - t2},
    )
