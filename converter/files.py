"""The checks every input file gets before it is opened, and the bounds every JSON input is read
within: one place, for sources, weights, manifests, configs and result files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    size); raises :class:`Cancelled` as soon as ``stop`` is set (the pipeline hashes a source
    beside its conversion and stops when the conversion is refused)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if stop is not None and stop.is_set():
                raise Cancelled
            h.update(block)
    return h.hexdigest()


def open_checked(path: str | os.PathLike, check: Callable[[os.stat_result], int]) -> tuple[int, int]:
    """A read-only descriptor of the file at ``path`` (links followed) and what ``check`` returns
    for it (its size). ``check`` refuses, by raising, whatever may not be read; it runs on the
    path's status before the open (opening a device can act on it) and again on the open
    descriptor (a file swapped in between cannot slip in). ``O_NONBLOCK`` keeps a FIFO swapped in
    from blocking the open. OSError (FileNotFoundError among them) is left to the caller to word.
    """
    check(os.stat(path))
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    fd = os.open(path, flags)
    try:
        return fd, check(os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, limit: int, error: type[CoatError], expected: str) -> bytes:
    """The bytes of the regular file at ``path``, refused with one line by ``error`` when it is
    not a regular file or holds more than ``limit`` bytes.

    The file is checked before it is opened and again on the open descriptor
    (:func:`open_checked`: a FIFO or device named like a list would block or never end), and
    never more than ``limit`` bytes are read.
    """

    def check(st: os.stat_result) -> int:
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: is a directory; give {expected} itself")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is not a regular file (a pipe or a device); give {expected}")
        if st.st_size > limit:  # refused unread
            raise error(
                f"{path}: {st.st_size} bytes, larger than {limit} bytes; larger than {expected} can be"
            )
        return st.st_size

    try:
        fd, _ = open_checked(path, check)
    except FileNotFoundError:
        raise error(f"{path}: no such file; check the path") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while being read
        raise error(f"{path}: larger than {limit} bytes; larger than {expected} can be")
    return data


class _Refused(ValueError):
    """A value :func:`load_json` refuses, raised inside ``json.loads``' hooks."""


def load_json(
    data: bytes | str, lead: str, error: type[CoatError], max_depth: int, max_number_chars: int
) -> Any:
    """The JSON value in ``data``, read within bounds; ``error(f"{lead} ({why})")`` otherwise.

    Refused: text that is not UTF-8 or not JSON, nesting deeper than ``max_depth`` (lists and
    objects), a number literal longer than ``max_number_chars`` (Python's int parsing is
    quadratic, and 1e400 would be inf), and NaN/Infinity, which JSON does not have. ``lead``
    names the input and what it should be, e.g. ``"m.json: not a readable release manifest"``.
    """

    def number(kind: type):
        def parse(text: str):
            if len(text) > max_number_chars:
                raise _Refused(f"a number of {len(text)} characters")
            return kind(text)

        return parse

    def constant(text: str):
        raise _Refused(f"{text} (JSON has no such number)")

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, parse_int=number(int), parse_float=number(float), parse_constant=constant)
    except _Refused as e:
        raise error(f"{lead} ({e})") from None
    except RecursionError:
        raise error(f"{lead} (nested too deep)") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError among them
        raise error(f"{lead} (invalid JSON: {' '.join(str(e).split())[:200]})") from None
    stack = [(value, 1)]  # the depth, measured without recursion
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise error(f"{lead} (nested more than {max_depth} deep)")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value
