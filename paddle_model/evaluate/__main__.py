"""``python -m paddle_model.evaluate``; as a file path, for ``paddle.distributed.launch``."""

from __future__ import annotations

import sys

from paddle_model.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
