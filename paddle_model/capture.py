"""What C++ libraries and child processes write to the process's own file descriptors, caught.

Paddle's glog, onnxruntime's logger and a compiler run by Paddle's extension builder write to
file descriptors 1 and 2 directly, below Python's ``sys.stdout``/``sys.stderr``, so only a
redirection of the descriptors themselves keeps their noise from the user. The redirection is
process-wide for the duration of the block: the callers are commands, not library calls made
from several threads. The kernels' build, the evaluate runner's rendezvous and the export each
decide what to do with what was caught.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

CAPTURE_LIMIT = 1 << 20  # bytes of a block's output read back (its end); a log is lines, not data


class Caught:
    """What a :func:`caught_fds` block wrote, filled in when the block ends (also when it raises);
    empty until then, so a caller may read it even when the redirection itself failed."""

    def __init__(self) -> None:
        self.data = b""  # at most CAPTURE_LIMIT bytes: the end of what was written

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


def _flush() -> None:
    # Python's buffered writes go out before the descriptors move (streams may be None or replaced)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()


@contextlib.contextmanager
def caught_fds(caught: Caught, *fds: int) -> Iterator[None]:
    """Redirect the file descriptors ``fds`` (1, 2 or both) to one temporary file inside the
    block; restore them on exit, whatever happens, and fill ``caught`` with the last
    :data:`CAPTURE_LIMIT` bytes written. Nothing is written back: the caller decides."""
    _flush()
    with tempfile.TemporaryFile() as log:
        saved: list[tuple[int, int]] = []
        try:
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                os.dup2(log.fileno(), fd)
            yield
        finally:
            _flush()
            for fd, copy in reversed(saved):
                os.dup2(copy, fd)
                os.close(copy)
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - CAPTURE_LIMIT))
            caught.data = log.read(CAPTURE_LIMIT)
