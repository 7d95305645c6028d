"""The one wrapper every command runs in: the project's typed errors as one line and exit 2.

Each command module is parse -> call -> print: its ``main(argv)`` is decorated with
:func:`command`, which turns a :class:`~converter.errors.CoatError` into ``error: <message>``
on one line of stderr and exit code 2, an ``OSError`` (disk full, read-only folder, ...) into
one line naming the file and exit 2, Ctrl-C (SIGINT) into one line and exit 130, and SIGTERM
into one line and exit 143. Interrupts arrive as exceptions, so the writers' cleanup runs.
``import paddle`` installs Paddle's own C-level SIGTERM handler (it prints a stack and kills
the process), so the wrapper puts its handler back the moment Paddle's import completes.
:class:`ArgumentParser` gives every command one-line usage errors (exit 2) and ``--version``.
"""

from __future__ import annotations

import argparse
import errno
import functools
import importlib.abc
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


def program_name(module_form: str) -> str:
    """The command as the user typed it, for usage lines and ``--version``: the console script
    (``coat-convert``) or script (``convert.py``) that ``sys.argv[0]`` names, else
    ``module_form`` (``python -m paddle_model.predict``: ``sys.argv[0]`` is then the module's
    file, which cannot be run by that name)."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    orig = getattr(sys, "orig_argv", [])
    interpreter_options = orig[: len(orig) - len(sys.argv) + 1]  # python [options] [-m module]
    as_module = "-m" in interpreter_options or argv0 == "__main__.py"
    if not argv0 or argv0 == "-c" or as_module:
        return module_form
    return argv0


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and a ``--version`` option; ``prog`` is the
    ``python -m`` form of the command, shown as :func:`program_name` finds it was run."""

    def __init__(self, *args, **kwargs) -> None:
        if "prog" in kwargs:
            kwargs["prog"] = program_name(kwargs["prog"])
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {version()}")

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)} (see --help)\n")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks clean up."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``after()`` once the top-level module ``name`` has been executed by its import."""

    def __init__(self, name: str, after: Callable[[], None]) -> None:
        self.name, self.after = name, after

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        spec = None
        for finder in list(sys.meta_path):  # the finders that would have found it without this one
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None and finder is not self else None
            if spec is not None:
                break
        if spec is not None and spec.loader is not None:  # a lookup alone (importlib.util.find_spec,
            spec.loader = _ThenCall(spec.loader, self._done)  # as paddle_model's check) runs nothing
        return spec

    def _done(self) -> None:
        self.remove()
        self.after()

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


class _ThenCall(importlib.abc.Loader):
    """A module loader that calls ``after()`` when the module has executed; else the loader it wraps."""

    def __init__(self, loader, after: Callable[[], None]) -> None:
        self._loader, self._after = loader, after

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        finally:  # the module keeps its own loader, as if imported without this one
            module.__loader__ = module.__spec__.loader = self._loader
        self._after()

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


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
        previous, hook = None, None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
            if "paddle" not in sys.modules:  # Paddle's import would replace the handler
                hook = _AfterImport("paddle", lambda: signal.signal(signal.SIGTERM, _raise_terminated))
                sys.meta_path.insert(0, hook)
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
            if hook is not None:
                hook.remove()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return run
