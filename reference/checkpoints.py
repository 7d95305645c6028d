"""Seeded CoaT checkpoints from timm, in the official mlpc-ucsd layout and in timm's.

Every tensor must matter: a freshly initialised model has LayerNorms at 1/0 and zero biases,
so a port that swapped two of them would still agree, and its small Linear weights let the
residual path drown a misplaced one. Seeding perturbs all of them (and the CLS tokens) away
from their initial values, deterministically.
"""

from __future__ import annotations

from pathlib import Path

import torch

from converter.variants import CoatVariant, get_variant

from .timm_model import build_timm


def seeded_model(variant: str | CoatVariant, seed: int = 0) -> torch.nn.Module:
    """timm's model for ``variant`` with seeded weights in which every tensor is distinct."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    torch.manual_seed(seed)
    model = build_timm(v)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():  # shared tensors are listed once
            noise = torch.randn(p.shape, generator=gen)
            if ".norm" in name or name.startswith("norm"):
                p.add_(noise * 0.1)  # LayerNorm weights around 1, biases around 0
            elif name.startswith("cls_token"):
                p.add_(noise * 0.5)
            elif name.endswith(".bias"):
                p.add_(noise * 0.02)
            elif p.ndim == 2:  # Linear weights: wider than timm's std .02 init, so that one
                p.add_(noise * 0.05)  # misplaced weight moves the logits well past tolerance
        for i in range(1, 5):
            # small patch embeddings: LayerNorms meet small variances, where their epsilons
            # (1e-5 in patch embeddings, 1e-6 in blocks) visibly change the outputs
            getattr(model, f"patch_embed{i}").proj.weight.mul_(0.01)
            getattr(model, f"patch_embed{i}").norm.weight.mul_(0.05)
    return model


def official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's state dict in the official layout: the unused ``norm1..norm3`` put back."""
    state = model.state_dict()
    dims = model.embed_dims
    gen = torch.Generator().manual_seed(1234)
    out = {}
    for key, value in state.items():
        if key == "norm4.weight":
            for i in (1, 2, 3):
                if f"norm{i}.weight" not in state:
                    out[f"norm{i}.weight"] = 1 + 0.1 * torch.randn(dims[i - 1], generator=gen)
                    out[f"norm{i}.bias"] = 0.1 * torch.randn(dims[i - 1], generator=gen)
        out[key] = value
    return out


def write_official_checkpoint(variant: str | CoatVariant, path: str | Path, seed: int = 0) -> Path:
    """``{"model": state_dict}`` as the official release files hold it."""
    path = Path(path)
    torch.save({"model": official_state_dict(seeded_model(variant, seed))}, path)
    return path


def write_timm_checkpoint(variant: str | CoatVariant, path: str | Path, seed: int = 0) -> Path:
    """timm's own state dict (unused norms filtered out)."""
    path = Path(path)
    torch.save(seeded_model(variant, seed).state_dict(), path)
    return path
