"""``python -m paddle_model.export``."""

from __future__ import annotations

import sys

from paddle_model.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
