"""The project's typed user errors, as :mod:`converter.errors` defines them."""

from __future__ import annotations

from converter.errors import CoatError, ConversionError, UnsafePickleError, WeightsError, preview

__all__ = ["CoatError", "ConversionError", "UnsafePickleError", "WeightsError", "preview"]
