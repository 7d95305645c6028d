"""The eight released CoaT variants: one table, importing neither torch nor paddle.

The Paddle model builds from it, the converter detects variants from it and the reference
side builds timm's model from it; ``tests/test_variants.py`` checks it against timm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# (window size, number of heads using it), as the official {3: 2, 5: 3, 7: 3}
DEFAULT_CRPE_WINDOW: tuple[tuple[int, int], ...] = ((3, 2), (5, 3), (7, 3))
LATER_PATCH_SIZE = 2  # the patch size of stages 2-4: each halves the token grid


@dataclass(frozen=True)
class CoatVariant:
    """Architecture and evaluation settings of one CoaT variant."""

    name: str
    embed_dims: tuple[int, int, int, int]
    serial_depths: tuple[int, int, int, int]
    parallel_depth: int = 0
    mlp_ratios: tuple[float, float, float, float] = (4, 4, 4, 4)
    num_heads: int = 8
    patch_size: int = 4
    qkv_bias: bool = True
    crpe_window: tuple[tuple[int, int], ...] = DEFAULT_CRPE_WINDOW
    norm_eps: float = 1e-6  # block and head LayerNorms (timm's LayerNorm)
    patch_norm_eps: float = 1e-5  # patch-embed LayerNorms (torch's nn.LayerNorm)
    img_size: int = 224  # default input size
    crop_pct: float = 0.9  # eval transform: resize to img_size / crop_pct, centre crop
    crop_mode: str = "center"  # "squash" resizes both sides to img_size, no crop
    interpolation: str = "bicubic"
    # the official release (mlpc-ucsd): first 8 hex digits of the file's sha256, ImageNet top-1/5
    release_sha256: str = ""
    top1: float = 0.0
    top5: float = 0.0

    @property
    def is_lite(self) -> bool:
        """CoaT-Lite has no parallel blocks and classifies from the last scale only."""
        return self.parallel_depth == 0

    @property
    def min_input_size(self) -> int:
        """The smallest input height and width the variant takes: every stage then has at least
        one token per side (the first patch size times the three later stages' halvings)."""
        return self.patch_size * LATER_PATCH_SIZE**3

    def mlp_hidden(self, stage: int) -> int:
        return int(self.embed_dims[stage] * self.mlp_ratios[stage])


def _variants(*variants: CoatVariant) -> Mapping[str, CoatVariant]:
    return MappingProxyType({v.name: v for v in variants})


VARIANTS: Mapping[str, CoatVariant] = _variants(
    CoatVariant(
        "coat_tiny",
        (152, 152, 152, 152),
        (2, 2, 2, 2),
        parallel_depth=6,
        release_sha256="c6efc33c",
        top1=78.3,
        top5=94.0,
    ),
    CoatVariant(
        "coat_mini",
        (152, 216, 216, 216),
        (2, 2, 2, 2),
        parallel_depth=6,
        release_sha256="40667eec",
        top1=81.0,
        top5=95.2,
    ),
    CoatVariant(
        "coat_small",
        (152, 320, 320, 320),
        (2, 2, 2, 2),
        parallel_depth=6,
        release_sha256="7479cf9b",
        top1=82.1,
        top5=96.1,
    ),
    CoatVariant(
        "coat_lite_tiny",
        (64, 128, 256, 320),
        (2, 2, 2, 2),
        mlp_ratios=(8, 8, 4, 4),
        release_sha256="e88e96b0",
        top1=77.5,
        top5=93.8,
    ),
    CoatVariant(
        "coat_lite_mini",
        (64, 128, 320, 512),
        (2, 2, 2, 2),
        mlp_ratios=(8, 8, 4, 4),
        release_sha256="6b4a8ae5",
        top1=79.1,
        top5=94.5,
    ),
    CoatVariant(
        "coat_lite_small",
        (64, 128, 320, 512),
        (3, 4, 6, 3),
        mlp_ratios=(8, 8, 4, 4),
        release_sha256="8d362f48",
        top1=81.9,
        top5=95.5,
    ),
    CoatVariant(
        "coat_lite_medium",
        (128, 256, 320, 512),
        (3, 6, 10, 8),
        release_sha256="a750cd63",
        top1=83.6,
        top5=96.7,
    ),
    CoatVariant(
        "coat_lite_medium_384",
        (128, 256, 320, 512),
        (3, 6, 10, 8),
        img_size=384,
        crop_pct=1.0,
        crop_mode="squash",
        release_sha256="f9129688",
        top1=84.5,
        top5=97.1,
    ),
)


def get_variant(name: str) -> CoatVariant:
    """The variant called ``name``; a KeyError that lists the known names otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown CoaT variant {name!r}; known variants: {', '.join(VARIANTS)}") from None
