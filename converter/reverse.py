"""Paddle weights back to PyTorch: timm's state-dict layout, loadable with ``strict=True``.

The inverse of the forward mapping, fitted by the same engine (:func:`converter.detect.plan_for`
with ``paddle=True``): the same keys (timm lists every alias, so they are all written, sharing
one tensor), Linear weights transposed back, dtypes kept. A round trip torch -> paddle ->
torch gives back timm's tensors bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .detect import plan_for
from .errors import ConversionError
from .layout import Layout
from .variants import VARIANTS, CoatVariant

if TYPE_CHECKING:
    import torch


def paddle_layout_for(
    shapes: Mapping[str, tuple[int, ...]], variant: CoatVariant | None, origin: str, name_hint: str = ""
) -> tuple[CoatVariant, Layout]:
    """The variant and layout a Paddle-layout state dict fits exactly (keys and shapes)."""
    plan = plan_for(shapes, variant, origin, name_hint, paddle=True)
    return VARIANTS[plan.variant.name], plan.layout


def to_torch_layout(state: Mapping[str, np.ndarray], layout: Layout, origin: str) -> dict[str, np.ndarray]:
    """timm's state dict (numpy): Linear weights transposed back, aliases sharing one array.

    An alias present in ``state`` must equal its canonical tensor; one left out is written
    from it.
    """
    canonical = {}
    for key, spec in layout.tensors.items():
        array = state[key]
        canonical[key] = np.ascontiguousarray(array.T if spec.transposed else array)
    for alias, key in layout.aliases.items():
        if alias in state and not np.array_equal(state[alias], state[key]):
            raise ConversionError(f"{origin}: {alias} should equal {key} but holds other values")
    return {k: canonical[layout.aliases.get(k, k)] for k in layout.order}


def torch_tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a torch tensor of the same dtype and bits, bfloat16 included (numpy's
    bfloat16 comes from ml_dtypes, which ``torch.from_numpy`` does not know). Needs torch."""
    import torch

    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def write_torch(state: Mapping[str, np.ndarray], path: Path, force: bool = False) -> None:
    """``torch.save`` of the state dict, aliases stored once; needs torch."""
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path}: writing a .pth file needs torch; install it, or write a .safetensors "
            "file with --to torch, which needs no torch"
        ) from None
    from .writers import atomic_write

    tensors: dict[int, torch.Tensor] = {}
    out = {}
    for key, array in state.items():
        if id(array) not in tensors:
            tensors[id(array)] = torch_tensor(array)
        out[key] = tensors[id(array)]
    atomic_write(path, lambda f: torch.save(out, f), force)
