"""timm's CoaT, built from this project's variant table and loaded from any checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import timm
import torch
from timm.models.coat import checkpoint_filter_fn

from converter.layout import num_classes_in
from converter.readers import read_checkpoint
from converter.reverse import torch_tensor
from converter.variants import CoatVariant, get_variant


def build_timm(
    variant: str | CoatVariant, img_size: int | None = None, num_classes: int = 1000, **kwargs
) -> torch.nn.Module:
    """timm's model for ``variant`` at ``img_size`` (its default size unless given), in eval mode."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    model = timm.create_model(
        v.name, pretrained=False, img_size=img_size or v.img_size, num_classes=num_classes, **kwargs
    )
    return model.eval()


def load_timm_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load a numpy state dict the way timm loads pretrained weights, strictly.

    timm's own ``checkpoint_filter_fn`` drops the unused official norms. Keys a file may omit
    because they alias another (``safetensors.torch.save_model``) are the only ones allowed
    missing, and only when the tensor they share was loaded.
    """
    tensors = {k: torch_tensor(v) for k, v in state.items()}
    filtered = checkpoint_filter_fn(tensors, model)
    result = model.load_state_dict(filtered, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"unexpected keys for timm's model: {result.unexpected_keys[:5]}")
    loaded = {id(p) for k, p in model.state_dict(keep_vars=True).items() if k in filtered}
    own = model.state_dict(keep_vars=True)
    really_missing = [k for k in result.missing_keys if id(own[k]) not in loaded]
    if really_missing:
        raise ValueError(f"missing keys for timm's model: {really_missing[:5]}")


def timm_from_checkpoint(
    path: str | Path, variant: str | CoatVariant, img_size: int | None = None, ema: bool = False
) -> torch.nn.Module:
    """timm's model for ``variant`` with the weights of the PyTorch checkpoint at ``path``."""
    state = read_checkpoint(path, ema=ema).arrays()
    model = build_timm(variant, img_size, num_classes=num_classes_in(state, torch_layout=True))
    load_timm_state(model, state)
    return model
