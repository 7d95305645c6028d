"""The one exception family for mistakes a user can fix: bad files, bad keys, bad options.

Messages are sentences that name the file or key and say what to do; command-line tools print
them as one line and exit with code 2.
"""

from __future__ import annotations


class CoatError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class WeightsError(CoatError):
    """A weights file is missing, unreadable, unsafe, or does not fit the model."""


class UnsafePickleError(WeightsError):
    """A pickle asks for a global outside the allowlist; nothing of it was executed."""


class PaddleMissingError(ImportError):
    """No supported Paddle is installed: raised by ``import paddle_model``, the message says what
    to install. Defined here, below Paddle, so that a caller can catch it without Paddle."""


def preview(keys, limit: int = 6) -> str:
    """``a, b, c and 4 more``: a short, sorted listing of keys for an error message."""
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class ConversionError(CoatError):
    """The checkpoint cannot be converted as asked; the message says why and what to do."""
