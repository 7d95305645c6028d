"""The one wrapper every command runs in: the project's typed errors as one line and exit 2.

Each command module is parse -> call -> print: its ``main(argv)`` is decorated with
:func:`command`, which turns a :class:`~converter.errors.CoatError` into ``error: <message>``
on one line of stderr and exit code 2, an ``OSError`` (disk full, read-only folder, ...) into
one line naming the file and exit 2, Ctrl-C (SIGINT) into one line and exit 130, and SIGTERM
into one line and exit 143. Interrupts arrive as exceptions, so the writers' cleanup runs.
:class:`ArgumentParser` gives every command one-line usage errors (exit 2) and ``--version``.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata

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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks clean up."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def describe_os_error(e: OSError) -> str:
    """``FILE: reason (ERRNO)``, one line, for a failed read or write."""
    where = e.filename if e.filename is not None else "a file"
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    reason = e.strerror or str(e)
    return f"{where}: {reason}" + (f" ({code})" if code else "")


def command(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a command's ``main(argv) -> exit code`` with the project's error handling."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return main(argv)
        except CoatError as e:
            return fail(str(e))
        except BrokenPipeError:  # the reader of our output went away (``| head``): stop quietly
            sys.stdout = open(os.devnull, "w")
            return 141
        except OSError as e:
            return fail(describe_os_error(e))
        except KeyboardInterrupt:
            return fail("interrupted", 130)
        except Terminated:
            return fail("terminated", 143)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return run
