"""CoaT (Co-Scale Conv-Attentional Image Transformers) for PaddlePaddle.

``paddle_model.variants`` and ``paddle_model.layout`` need neither paddle nor torch; the model
itself (``create_model``, ``CoaT``, the per-variant factories) imports paddle on first use.
"""
from __future__ import annotations

import importlib

from .errors import CoatError, UnsafePickleError, WeightsError
from .variants import VARIANTS, CoatVariant, get_variant

_LAZY = {
    "CoaT": ".coat",
    "create_model": ".factory",
    **{name: ".factory" for name in VARIANTS},
    "read_weights": ".weights",
    "load_state_dict": ".weights",
}

__all__ = ["VARIANTS", "CoatVariant", "get_variant", "CoatError", "WeightsError",
           "UnsafePickleError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
