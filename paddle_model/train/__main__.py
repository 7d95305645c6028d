"""``python -m paddle_model.train``: the ``coat-train`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
