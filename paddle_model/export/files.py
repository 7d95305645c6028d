"""Complete or nothing: an export's files are written in a fresh hidden folder beside the
destination and moved into place only when all of them are written and checked.

Paddle and paddle2onnx write to paths they are given, so :func:`converter.writers.atomic_write`
(which hands a writer an open file) cannot serve; this is its counterpart for files written by
others, with the same contract: nothing is left behind by a failure or an interrupt (a SIGKILL can
leave the hidden folder), nothing existing is replaced unless ``force``, and an ``OSError`` names
the destination the user gave, not the temporary one.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from ..errors import CoatError


class Staging:
    """``with Staging(prefix, suffixes, force) as stage:`` write ``stage.path(suffix)`` for each
    suffix, then ``stage.publish(suffixes)``; whatever is not published is removed on exit.

    Entering checks the destinations (none exists unless ``force``; none is a folder) and creates
    the missing parent folders, which are removed again if nothing is published. Publishing
    (:meth:`publish`) links each file to its name (``link(2)`` fails if another writer got there
    first), with ``force`` after renaming the old files aside; it is all or nothing, but the files
    are published one after the other, so a reader racing the export may see the new ``.json``
    before the new ``.pdiparams``.
    """

    def __init__(self, prefix: str | Path, suffixes: tuple[str, ...], force: bool = False) -> None:
        self.prefix = Path(prefix)
        self.suffixes = suffixes
        self.force = force
        self.folder: Path | None = None
        self.created: list[Path] = []  # parent folders this export made, deepest last
        self.published: list[Path] = []

    def destination(self, suffix: str) -> Path:
        return Path(f"{self.prefix}{suffix}")

    def path(self, suffix: str) -> Path:
        """Where the file that becomes ``prefix + suffix`` is written first."""
        assert self.folder is not None, "use Staging in a with statement"
        return self.folder / f"{self.prefix.name}{suffix}"

    @property
    def staged_prefix(self) -> Path:
        assert self.folder is not None, "use Staging in a with statement"
        return self.folder / self.prefix.name

    def __enter__(self) -> Staging:
        for suffix in self.suffixes:
            target = self.destination(suffix)
            if target.is_dir():
                raise CoatError(f"{target}: is a folder; give another output prefix")
            if os.path.lexists(target) and not self.force:
                raise CoatError(f"{target}: already exists; pass --force to overwrite it")
        self._make_parents()
        try:
            self.folder = Path(tempfile.mkdtemp(prefix=f".{self.prefix.name[:64]}.", dir=self.prefix.parent))
        except OSError as e:
            self._remove_created()
            raise OSError(e.errno, e.strerror, str(self.destination(self.suffixes[0]))) from None
        return self

    def _make_parents(self) -> None:
        missing = []
        folder = self.prefix.parent
        while not folder.is_dir():
            if os.path.lexists(folder):
                raise CoatError(f"{folder}: is not a folder; give another output prefix")
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except OSError as e:
                self._remove_created()
                raise OSError(e.errno, e.strerror, str(folder)) from None
            self.created.append(folder)

    def publish(self, suffixes: tuple[str, ...]) -> None:
        """Move the staged files of ``suffixes`` to their destinations, all or none.

        With ``force``, every existing destination of the export (also one of a suffix not
        published now, such as the ``.onnx`` of an earlier export whose new one failed its
        check) is first renamed aside into the staging folder; the new files then take their
        names. A failure or an interrupt takes the new files back and returns the old ones to
        their names, so the destination never mixes two exports.
        """
        assert self.folder is not None, "use Staging in a with statement"
        aside: list[tuple[Path, Path]] = []  # (old file in the staging folder, its name)
        try:
            if self.force:
                for suffix in self.suffixes:
                    target = self.destination(suffix)
                    if os.path.lexists(target):
                        old = self.folder / f"{self.prefix.name}{suffix}.replaced"
                        os.rename(target, old)
                        aside.append((old, target))
            for suffix in suffixes:
                source, target = self.path(suffix), self.destination(suffix)
                try:
                    os.link(source, target)  # fails if another writer got there first
                except FileExistsError:
                    raise CoatError(
                        f"{target}: was created by someone else during the export; pass --force "
                        "to overwrite it"
                    ) from None
                self.published.append(target)
        except BaseException:
            for target in self.published:
                target.unlink(missing_ok=True)
            self.published = []
            for old, target in reversed(aside):
                os.replace(old, target)
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if not self.published:
            self._remove_created()
        if isinstance(error, CoatError) and self.folder is not None:  # say the user's names
            staged = str(self.staged_prefix)
            if staged in str(error):
                raise type(error)(str(error).replace(staged, str(self.prefix))) from None
        if isinstance(error, OSError) and error.filename and self.folder is not None:
            named = self._destination_of(error.filename)
            if named is not None:
                raise OSError(error.errno, error.strerror, str(named)) from None

    def _destination_of(self, filename: str) -> Path | None:
        """The destination a staged file stands for (its folder for the folder itself)."""
        path = Path(filename)
        for suffix in self.suffixes:
            if path == self.path(suffix):
                return self.destination(suffix)
        if path == self.folder or path.parent == self.folder:
            return self.destination(self.suffixes[0])
        return None

    def _remove_created(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break  # someone else put something there: it stays
        self.created = []


NEARLY_FULL = 1 << 20  # bytes free: below this, a short file is a full disk's doing


def no_space(folder: Path) -> bool:
    """Whether the file system of ``folder`` is (nearly) full: why a file written there by a
    library that does not check its writes came out short."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL


def disk_full(target: Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
