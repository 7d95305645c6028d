"""What C++ libraries print during one call: file descriptor 2 caught, sorted, given back.

Paddle's glog and onnxruntime's logger write to the process's stderr directly, below Python's
``sys.stderr``, so only a redirection of the descriptor itself can keep their noise from the user
(or let the export see onnxruntime's warnings). The redirection is process-wide for the duration
of the block: the export is a command, not a library call made from several threads.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

CAPTURE_LIMIT = 1 << 20  # bytes of a block's stderr read back; a log is lines, not data


@contextlib.contextmanager
def sorted_stderr(matching: re.Pattern[str]) -> Iterator[list[str]]:
    """Catch what the block writes to file descriptor 2. On exit (also on an exception) the lines
    that ``matching`` finds are appended to the yielded list and the others written back to
    stderr, so real errors still reach the user."""
    matched: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield matched
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            text = log.read(CAPTURE_LIMIT).decode(errors="replace")
            kept = []
            for line in text.splitlines():
                (matched if matching.search(line) else kept).append(line)
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
