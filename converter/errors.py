"""Errors of the conversion; all are :class:`paddle_model.errors.CoatError` (exit code 2)."""
from __future__ import annotations

from paddle_model.errors import CoatError, preview  # noqa: F401  (re-exported)


class ConversionError(CoatError):
    """The checkpoint cannot be converted as asked; the message says why and what to do."""

