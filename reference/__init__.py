"""The PyTorch side of every comparison: timm's CoaT, seeded checkpoints, and the parity harness.

This package needs torch and timm (the ``reference`` extra; :data:`REFERENCE_INSTALL` says what to
install). Importing it needs neither: each ``python -m reference.*`` command calls :func:`require`
first, so that a missing framework is one line and exit code 2 (as the console scripts say a
missing Paddle), not an import traceback.
"""

from __future__ import annotations

import importlib.util

from converter.errors import CoatError, PaddleMissingError
from converter.extras import install_hint

# the reference extra: timm's model for the parity check, huggingface_hub and jinja2 for the card
REFERENCE_MODULES = ("torch", "torchvision", "timm", "huggingface_hub", "jinja2")
REFERENCE_INSTALL = install_hint("reference")


class ReferenceMissingError(CoatError):
    """A module of the reference extra (or Paddle) is not installed; the message says what to
    install. A :class:`CoatError`, so that every command says it in one line with exit code 2."""


def missing(modules: tuple[str, ...] = REFERENCE_MODULES) -> list[str]:
    """Those of ``modules`` that are not installed (a module hidden as ``sys.modules[name] =
    None`` counts as not installed)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(
    what: str, modules: tuple[str, ...] = ("torch", "timm"), why: str = "", paddle: bool = True
) -> None:
    """Raise :class:`ReferenceMissingError` naming ``what`` (the command, in the user's terms)
    unless ``modules`` (and, with ``paddle``, a supported Paddle) are installed; ``why`` says what
    they are for."""
    absent = missing(modules)
    if absent:
        reason = f" {why}" if why else ""
        raise ReferenceMissingError(
            f"{what} needs {', '.join(absent)} (not installed){reason}: {REFERENCE_INSTALL}"
        )
    if not paddle:
        return
    try:
        import paddle_model  # noqa: F401  (its own check of the installed Paddle)
    except PaddleMissingError as e:
        raise ReferenceMissingError(str(e)) from None
