"""Checkpoint in, Paddle weights out: read, detect, map, check, write."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .detect import plan_for
from .errors import ConversionError, WeightsError, preview
from .files import sha256_file
from .layout import num_classes_in
from .mapping import MappingReport, apply_plan, check_declared_ties
from .paddle_weights import read_weights
from .readers import read_checkpoint
from .reverse import paddle_layout_for, to_torch_layout, write_torch
from .safetensors_io import bfloat16
from .variants import CoatVariant, get_variant
from .writers import (
    PADDLE_FORMATS,
    TORCH_FORMATS,
    check_destination,
    write_safetensors,
    write_state_dict,
)


@dataclass
class ConversionResult:
    variant: str
    source: str
    destination: str
    container: str
    dtype: str
    num_classes: int
    source_sha256: str | None  # None unless asked for (hash_source)
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
            f"  written      {m.written} keys ({m.tensors} tensors, {m.written - m.tensors} aliases), "
            f"{self.dtype}",
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
    return bfloat16() if name == "bfloat16" else np.dtype(name)


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    variant: str | CoatVariant | None = None,
    force: bool = False,
    ema: bool = False,
    allow_nonfinite: bool = False,
    dtype: str | None = None,
    to: str | None = None,
    hash_source: bool = True,
) -> ConversionResult:
    """Convert the PyTorch CoaT checkpoint ``src`` into Paddle weights at ``dst``.

    The variant is detected from the tensors unless given; tensors keep their dtype unless
    ``dtype`` ("float32", "float16" or "bfloat16") casts them. ``to="torch"`` (the default
    for a ``.pth``/``.pt`` destination) goes the other way: Paddle weights to timm's layout.
    ``hash_source`` computes the source's sha256 for the report, alongside the conversion; a
    refusal stops the hashing at once, so it never waits for a large invalid file to be read.
    Raises a :class:`~converter.errors.CoatError` (nothing written) when anything does not fit.
    """
    src, dst = Path(src), Path(dst)
    if isinstance(variant, str):
        try:
            variant = get_variant(variant)
        except KeyError as e:
            raise ConversionError(str(e.args[0])) from None
    to = to or ("torch" if dst.suffix in (".pth", ".pt") else "paddle")
    if to not in ("paddle", "torch"):
        raise ConversionError(f"unknown direction {to!r}; choose paddle or torch")
    check_destination(dst, force, TORCH_FORMATS if to == "torch" else PADDLE_FORMATS)
    step = _to_torch if to == "torch" else _to_paddle
    timings: dict[str, float] = {}
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:  # hash the source while converting it
        sha256 = pool.submit(sha256_file, src, stop) if hash_source and src.is_file() else None
        try:
            name, container, state, report, num_classes = step(
                src, dst, variant, ema, allow_nonfinite, _cast_dtype(dtype), timings, force
            )
        except BaseException:
            stop.set()
            raise
    return ConversionResult(
        variant=name,
        source=str(src),
        destination=str(dst),
        container=container,
        dtype="/".join(sorted({str(a.dtype) for a in state.values()})),
        num_classes=num_classes,
        source_sha256=sha256.result() if sha256 else None,
        mapping=report,
        timings=timings,
    )


def _to_paddle(src, dst, variant, ema, allow_nonfinite, dtype, timings, force):
    t0 = time.perf_counter()
    checkpoint = read_checkpoint(src, ema=ema)
    t1 = time.perf_counter()
    shapes = {k: tuple(v.shape) for k, v in checkpoint.state.items()}
    plan = plan_for(shapes, variant, origin=str(src), name_hint=src.name)
    check_declared_ties(plan, checkpoint.declared_ties, str(src))
    state, report = apply_plan(
        plan, checkpoint.state, origin=str(src), allow_nonfinite=allow_nonfinite, dtype=dtype
    )
    t2 = time.perf_counter()
    metadata = {"format": "paddle", "variant": plan.variant.name}
    write_state_dict(state, dst, plan.layout.aliases, metadata, force)
    timings.update(read_s=t1 - t0, map_s=t2 - t1, write_s=time.perf_counter() - t2)
    return plan.variant.name, checkpoint.container, state, report, num_classes_in(state)


def _to_torch(src, dst, variant, ema, allow_nonfinite, dtype, timings, force):
    if ema:
        raise ConversionError("--ema applies to PyTorch training checkpoints, not to Paddle weights")
    t0 = time.perf_counter()
    try:
        source = read_weights(src)
    except WeightsError as e:
        raise ConversionError(f"{e} (converting to torch needs Paddle weights as the source)") from None
    t1 = time.perf_counter()
    shapes = {k: tuple(v.shape) for k, v in source.items()}
    v, layout = paddle_layout_for(shapes, variant, str(src), src.name)
    if dtype is not None:
        source = {k: a.astype(dtype) for k, a in source.items()}
    if not allow_nonfinite:
        bad = [k for k in layout.tensors if not np.isfinite(source[k].astype(np.float32)).all()]
        if bad:
            raise ConversionError(
                f"{src}: {preview(bad)} contain NaN or Inf values; pass --allow-nonfinite to convert anyway"
            )
    state = to_torch_layout(source, layout, str(src))
    t2 = time.perf_counter()
    if dst.suffix == ".safetensors":  # timm's hub layout: aliases named in the metadata
        write_safetensors(state, dst, layout.aliases, {"format": "pt"}, force)
    else:
        write_torch(state, dst, force)
    timings.update(read_s=t1 - t0, map_s=t2 - t1, write_s=time.perf_counter() - t2)
    report = MappingReport(
        tensors=len(layout.tensors),
        written=len(state),
        transposed=[k for k, spec in layout.tensors.items() if spec.transposed],
        dropped={},
        ties_checked=sorted(layout.aliases),
        ties_filled=[],
    )
    return v.name, "paddle weights", state, report, num_classes_in(state, torch_layout=True)
