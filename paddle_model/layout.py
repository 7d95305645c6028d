"""The state-dict format, as :mod:`converter.layout` defines it (that layer needs no paddle)."""

from __future__ import annotations

from converter.layout import CONV, LINEAR, NORM, TOKEN, Layout, TensorSpec, coat_layout

__all__ = ["CONV", "LINEAR", "NORM", "TOKEN", "Layout", "TensorSpec", "coat_layout"]
