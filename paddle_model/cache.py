"""Where the project keeps what it builds and downloads: one root for the kernels and the weights.

``$COAT_PADDLE_CACHE`` if set, else ``~/.cache/coat_paddle``. Each user of the cache takes its own
folder below the root (:mod:`paddle_model.kernels`: ``py3XX/``; :mod:`paddle_model.hub`:
``weights/``).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "COAT_PADDLE_CACHE"


def cache_root() -> Path:
    """The project's cache folder (it may not exist yet)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "coat_paddle")
