"""The project's typed user errors, as :mod:`converter.errors` defines them, and the model's own."""

from __future__ import annotations

from converter.errors import CoatError, ConversionError, UnsafePickleError, WeightsError, preview

__all__ = ["CoatError", "ConversionError", "InputError", "UnsafePickleError", "WeightsError", "preview"]


class InputError(CoatError, ValueError):
    """An input tensor the model cannot take: not [B, C, H, W], another channel count, or a side
    under the variant's minimum input size. Raised before any op runs."""
