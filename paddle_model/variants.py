"""The variant table, as :mod:`converter.variants` defines it (that layer needs no paddle)."""

from __future__ import annotations

from converter.variants import DEFAULT_CRPE_WINDOW, LATER_PATCH_SIZE, VARIANTS, CoatVariant, get_variant

__all__ = ["DEFAULT_CRPE_WINDOW", "LATER_PATCH_SIZE", "VARIANTS", "CoatVariant", "get_variant"]
