"""What C++ libraries print during one export step: file descriptor 2 caught (by
:mod:`paddle_model.capture`), its lines sorted into the ones the export reads (onnxruntime's
warnings) or drops (known trace noise) and the rest, which are given back to the user.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

from ..capture import Caught, caught_fds


@contextlib.contextmanager
def sorted_stderr(matching: re.Pattern[str]) -> Iterator[list[str]]:
    """Catch what the block writes to file descriptor 2. On exit (also on an exception) the lines
    that ``matching`` finds are appended to the yielded list and the others written back to
    stderr, so real errors still reach the user."""
    matched: list[str] = []
    log = Caught()
    try:
        with caught_fds(log, 2):
            yield matched
    finally:
        kept = []
        for line in log.text.splitlines():
            (matched if matching.search(line) else kept).append(line)
        if kept:
            print("\n".join(kept), file=sys.stderr, flush=True)
