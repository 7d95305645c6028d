"""The one wrapper every command runs in: the project's typed errors as one line and exit 2.

Each command module is parse -> call -> print: its ``main(argv)`` is decorated with
:func:`command`, which turns a :class:`~converter.errors.CoatError` into ``error: <message>``
on one line of stderr and exit code 2, and an interrupt into one line and exit 130.
:class:`ArgumentParser` gives every command one-line usage errors (exit 2) and ``--version``.
"""
from __future__ import annotations

import argparse
import functools
import sys
from importlib import metadata
from typing import Callable, Sequence

from .errors import CoatError

DISTRIBUTION = "coat-paddle"


def version() -> str:
    """The installed version of this project, or a note that it is not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def one_line(text: str) -> str:
    """``text`` on one line: a file name holding a newline must not split an error message."""
    return " ".join(str(text).splitlines())


def fail(message: str, code: int = 2) -> int:
    """Print ``error: message`` on one line of stderr; return ``code``."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return code


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and a ``--version`` option."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {version()}")

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)} (see --help)\n")


def command(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a command's ``main(argv) -> exit code`` with the project's error handling."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except CoatError as e:
            return fail(str(e))
        except KeyboardInterrupt:
            return fail("interrupted", 130)

    return run
