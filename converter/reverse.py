"""Paddle weights back to PyTorch: timm's state-dict layout, loadable with ``strict=True``.

The inverse of the forward mapping: the same keys (timm lists every alias, so they are all
written, sharing one tensor), Linear weights transposed back, dtypes kept. A round trip
torch -> paddle -> torch gives back timm's tensors bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .layout import Layout, coat_layout
from .variants import VARIANTS, CoatVariant

from .detect import choose_variant
from .errors import ConversionError, preview


def paddle_layout_for(shapes: Mapping[str, tuple[int, ...]], variant: CoatVariant | None,
                      origin: str, name_hint: str = "") -> tuple[CoatVariant, Layout]:
    """The variant and layout a Paddle-layout state dict has exactly (keys and shapes)."""
    head = any(k.startswith("norm4.") for k in shapes)
    num_classes = int(shapes["head.weight"][1]) if "head.weight" in shapes else 0
    candidates = [variant] if variant is not None else list(VARIANTS.values())
    misfit = {}
    for v in candidates:
        layout = coat_layout(v, num_classes=num_classes, head=head)
        missing = set(layout.order) - shapes.keys()
        unexpected = shapes.keys() - set(layout.order)
        mis_shaped = [k for k in set(layout.order) & shapes.keys() if tuple(shapes[k]) != layout.spec(k).shape]
        misfit[v.name] = (layout, missing, unexpected, mis_shaped)
    fits = [n for n, (_, a, b, c) in misfit.items() if not (a or b or c)]
    if fits:
        name = choose_variant(fits, origin, name_hint)
        return VARIANTS[name], misfit[name][0]
    name, (_, missing, unexpected, mis_shaped) = min(
        misfit.items(), key=lambda kv: sum(len(x) for x in kv[1][1:]))
    parts = [f"{len(x)} {what} ({preview(x)})" for x, what in
             ((missing, "missing"), (unexpected, "unexpected"), (mis_shaped, "mis-shaped")) if x]
    raise ConversionError(f"{origin}: not Paddle CoaT weights; closest is {name}: " + "; ".join(parts))


def to_torch_layout(state: Mapping[str, np.ndarray], layout: Layout, origin: str) -> dict[str, np.ndarray]:
    """timm's state dict (numpy): Linear weights transposed back, aliases sharing one array."""
    canonical = {}
    for key, spec in layout.tensors.items():
        array = state[key]
        canonical[key] = np.ascontiguousarray(array.T if spec.transposed else array)
    for alias, key in layout.aliases.items():
        if not np.array_equal(state[alias], state[key]):
            raise ConversionError(f"{origin}: {alias} should equal {key} but holds other values")
    return {k: canonical[layout.aliases.get(k, k)] for k in layout.order}


def write_torch(state: Mapping[str, np.ndarray], path: Path, force: bool = False) -> None:
    """``torch.save`` of the state dict, aliases stored once; needs torch."""
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path}: writing a .pth file needs torch; install it, or write a .safetensors "
            "file with --to torch, which needs no torch") from None
    from .writers import atomic_write

    tensors: dict[int, "torch.Tensor"] = {}
    out = {}
    for key, array in state.items():
        if id(array) not in tensors:
            if array.dtype.name == "bfloat16":
                tensors[id(array)] = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
            else:
                tensors[id(array)] = torch.from_numpy(array.copy())
        out[key] = tensors[id(array)]
    atomic_write(path, lambda f: torch.save(out, f), force)
