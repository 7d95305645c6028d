"""Reading source checkpoints into a flat state dict of numpy arrays, without torch.

Handles ``torch.save`` files (zip archives and the legacy format of torch < 1.6; ``.pth``/
``.pt``/``.bin``/``.tar``, any name) and ``.safetensors`` files, and unwraps what the state dict
comes inside: the official
``{"model": ...}`` release files and training checkpoints, ``state_dict`` wrappers, EMA copies,
and the ``module.`` / ``_orig_mod.`` prefixes of DDP and ``torch.compile``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import safetensors_io
from .errors import ConversionError, preview
from .files import check_input_file
from .lazy import Lazy
from .paddle_weights import safetensors_aliases
from .torch_pickle import (
    is_legacy_torch,
    is_torch_zip,
    load_legacy_torch_file,
    load_torch_file,
)

_WRAPPERS = ("state_dict", "model")
_EMA_WRAPPERS = ("model_ema", "state_dict_ema")
_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    """A source state dict and how it was found."""

    state: dict[str, Lazy]  # read on demand: conversion streams tensor by tensor
    container: str  # e.g. "torch zip, 'model' entry", "safetensors"
    declared_ties: dict[str, str] = field(default_factory=dict)  # absent alias -> kept key

    def arrays(self) -> dict[str, np.ndarray]:
        """Every tensor read into memory."""
        return {k: v.load() for k, v in self.state.items()}


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Lazy) for k, v in obj.items())
    )


def _unwrap(obj: Any, path: Path, ema: bool) -> tuple[dict[str, np.ndarray], str]:
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    if ema:
        for key in _EMA_WRAPPERS:
            if obj.get(key) is not None:
                return obj[key], f"'{key}' entry"
        raise ConversionError(
            f"{path}: --ema was given but the checkpoint has no EMA weights "
            f"(no non-empty {' or '.join(_EMA_WRAPPERS)} entry); drop --ema to take the model weights"
        )
    if _is_state_dict(obj):
        return obj, "bare state dict"
    for key in _WRAPPERS:
        if isinstance(obj.get(key), dict):
            return obj[key], f"'{key}' entry"
    raise ConversionError(
        f"{path}: found no state dict; expected tensors at the top level or under "
        f"{', '.join(repr(k) for k in _WRAPPERS + _EMA_WRAPPERS)}; the file has "
        f"{preview(str(k) for k in obj)}"
    )


def _strip_prefixes(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    stripped = []
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def read_checkpoint(path: str | Path, ema: bool = False) -> Checkpoint:
    """The state dict inside the checkpoint at ``path``, as numpy arrays."""
    path = Path(path)
    check_input_file(path, ConversionError, "the checkpoint file")
    if safetensors_io.is_safetensors(path):
        if ema:
            raise ConversionError(
                f"{path}: --ema needs a training checkpoint; a .safetensors file has one state dict"
            )
        state, metadata = safetensors_io.open_file(path)
        if metadata.get("format") == "paddle":
            raise ConversionError(
                f"{path}: holds Paddle weights (written by this converter); to "
                "turn them back into timm's layout pass --to torch"
            )
        container, declared = "safetensors", safetensors_aliases(metadata, state)
    elif is_torch_zip(path):
        state, entry = _unwrap(load_torch_file(path), path, ema)
        container, declared = f"torch zip, {entry}", {}
    elif is_legacy_torch(path):
        state, entry = _unwrap(load_legacy_torch_file(path), path, ema)
        container, declared = f"legacy torch file, {entry}", {}
    elif path.suffix == ".pdparams":
        raise ConversionError(
            f"{path}: is Paddle weights (.pdparams), not a PyTorch checkpoint; to "
            "turn them into timm's layout pass --to torch"
        )
    else:
        raise ConversionError(
            f"{path}: neither a PyTorch checkpoint (zip or legacy format) nor a .safetensors file"
        )
    state, stripped = _strip_prefixes(state)
    if stripped:
        container += f", prefix {' '.join(stripped)} removed"
    bad = [k for k, v in state.items() if not isinstance(v, Lazy)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {preview(bad)}")
    return Checkpoint(state, container, declared)
