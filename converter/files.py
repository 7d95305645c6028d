"""The checks every input file gets before it is opened: one place, for sources and weights."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

from .errors import CoatError


def check_input_file(path: Path, error: type[CoatError], expected: str) -> int:
    """The size of the regular file at ``path``; ``error`` with one clear line otherwise.

    A FIFO or device would block or never end, so only regular files are read (symlinks to
    them are fine). ``expected`` names what the file should be, for the messages.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such file; check the path") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a directory; give {expected} itself")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is not a regular file (a pipe or a device); give {expected}")
    if st.st_size == 0:
        raise error(f"{path}: is empty")
    return st.st_size


class Cancelled(Exception):
    """:func:`sha256_file` gave up because its ``stop`` event was set."""


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    """The sha256 of the file at ``path``, read in 1 MiB blocks (memory stays flat whatever the
    size); raises :class:`Cancelled` as soon as ``stop`` is set."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if stop is not None and stop.is_set():
                raise Cancelled
            h.update(block)
    return h.hexdigest()


def read_bounded(path: str | os.PathLike, limit: int, error: type[CoatError], expected: str) -> bytes:
    """The bytes of the regular file at ``path``, refused with one line by ``error`` when it is
    not a regular file or holds more than ``limit`` bytes.

    The file is opened without blocking and checked on the open descriptor (a FIFO or device
    named like a list would block or never end), and never more than ``limit`` bytes are read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such file; check the path") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path}: is a directory; give {expected} itself")
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is not a regular file (a pipe or a device); give {expected}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit} bytes, the most {expected} may hold")
    return data
