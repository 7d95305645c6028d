"""Reading source checkpoints into a flat state dict of numpy arrays, without torch.

Handles ``torch.save`` zip archives (``.pth``/``.pt``/``.bin``/``.tar``, any name) and
``.safetensors`` files, and unwraps what the state dict comes inside: the official
``{"model": ...}`` release files and training checkpoints, ``state_dict`` wrappers, EMA copies,
and the ``module.`` / ``_orig_mod.`` prefixes of DDP and ``torch.compile``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import safetensors_io
from .paddle_weights import safetensors_aliases

from .errors import ConversionError, preview
from .lazy import Lazy
from .torch_pickle import is_torch_zip, load_torch_file

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


def _check_source(path: Path) -> None:
    if not path.exists():
        raise ConversionError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ConversionError(f"{path}: is a directory; give the checkpoint file itself")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: is empty")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Lazy) for k, v in obj.items())


def _lazy_safetensors(path: Path) -> tuple[dict[str, Lazy], dict[str, str]]:
    """The tensors of a safetensors file, each read from its offset when loaded."""
    with open(path, "rb") as f:
        header, metadata, start = safetensors_io.read_header(f, path.stat().st_size, path)

    def reader(entry: dict):
        def load() -> np.ndarray:
            with open(path, "rb") as f:
                return safetensors_io.read_tensor(f, start, entry, path)
        return load

    state = {name: Lazy(entry["shape"], safetensors_io.DTYPES[entry["dtype"]], reader(entry),
                        identity=tuple(entry["data_offsets"]))
             for name, entry in header.items()}
    return state, metadata


def _unwrap(obj: Any, path: Path, ema: bool) -> tuple[dict[str, np.ndarray], str]:
    if not isinstance(obj, dict):
        raise ConversionError(
            f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    if ema:
        for key in _EMA_WRAPPERS:
            if obj.get(key) is not None:
                return obj[key], f"'{key}' entry"
        raise ConversionError(
            f"{path}: --ema was given but the checkpoint has no EMA weights "
            f"(no non-empty {' or '.join(_EMA_WRAPPERS)} entry); drop --ema to take the model weights")
    if _is_state_dict(obj):
        return obj, "bare state dict"
    for key in _WRAPPERS:
        if isinstance(obj.get(key), dict):
            return obj[key], f"'{key}' entry"
    raise ConversionError(
        f"{path}: found no state dict; expected tensors at the top level or under "
        f"{', '.join(repr(k) for k in _WRAPPERS + _EMA_WRAPPERS)}; the file has "
        f"{preview(str(k) for k in obj)}")


def _strip_prefixes(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    stripped = []
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def read_checkpoint(path: str | Path, ema: bool = False) -> Checkpoint:
    """The state dict inside the checkpoint at ``path``, as numpy arrays."""
    path = Path(path)
    _check_source(path)
    if safetensors_io.is_safetensors(path):
        if ema:
            raise ConversionError(f"{path}: --ema needs a training checkpoint; a .safetensors file has one state dict")
        state, metadata = _lazy_safetensors(path)
        container, declared = "safetensors", safetensors_aliases(metadata, state)
    elif is_torch_zip(path):
        state, entry = _unwrap(load_torch_file(path), path, ema)
        container, declared = f"torch zip, {entry}", {}
    else:
        raise ConversionError(
            f"{path}: neither a PyTorch zip checkpoint nor a .safetensors file "
            "(legacy pre-1.6 torch files: re-save them with a current torch.save)")
    state, stripped = _strip_prefixes(state)
    if stripped:
        container += f", prefix {' '.join(stripped)} removed"
    bad = [k for k, v in state.items() if not isinstance(v, Lazy)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {preview(bad)}")
    return Checkpoint(state, container, declared)
