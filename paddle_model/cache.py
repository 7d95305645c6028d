"""Where the project keeps what it builds and downloads: one root for the kernels and the weights,
and the checks that make it safe to load code from.

``$COAT_PADDLE_CACHE`` if set, else ``~/.cache/coat_paddle``. Each user of the cache takes its own
folder below the root (:mod:`paddle_model.kernels`: ``py3XX/``; :mod:`paddle_model.hub`:
``weights/``).

Code loaded from the cache runs with the user's rights, so, as pip and torch treat theirs, a
folder or file there is trusted only when this user owns it, nobody else can write it, and it is
not a symbolic link (:func:`unsafe_reason`); folders are created private (0700) one at a time
without following links (:func:`private_folder`), and files opened without following them
(:func:`open_private`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

CACHE_ENV = "COAT_PADDLE_CACHE"


def cache_root() -> Path:
    """The project's cache folder (it may not exist yet)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "coat_paddle")


def unsafe_reason(path: Path, st: os.stat_result | None = None) -> str | None:
    """Why ``path`` (itself, not where a link points) must not be loaded from or written into,
    in a few words naming it; None when it is a folder or regular file that this user owns and
    that neither its group nor others can write. ``st``: its ``lstat``, if already taken."""
    st = st or os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return f"{path} is not a regular file or folder"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return f"{path} belongs to user id {st.st_uid}, not to this user ({os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} can be written by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
    return None


def private_folder(root: Path, path: Path) -> str | None:
    """Make the folder ``path`` below the cache ``root`` where missing, each new folder 0700 and
    none reached through a link, and check ``root`` and every folder down to ``path``.

    Returns the first problem (:func:`unsafe_reason`) or None. Links above ``root`` (a home
    folder on another disk) are the user's own and are followed.
    """
    real_root = Path(os.path.realpath(root))
    parts = Path(path).relative_to(root).parts
    os.makedirs(real_root, mode=0o700, exist_ok=True)
    current = real_root
    problem = unsafe_reason(current)
    for part in parts:
        if problem:
            return problem
        current = current / part
        try:
            os.mkdir(current, 0o700)  # mkdir never follows a link at its last component
        except FileExistsError:
            pass
        problem = unsafe_reason(current)
    return problem


def unsafe_tree(folder: Path) -> str | None:
    """The first entry in ``folder`` or below it (links not followed) that :func:`unsafe_reason`
    refuses, or None."""
    for parent, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            problem = unsafe_reason(Path(parent) / name)
            if problem:
                return problem
    return None


def seal_tree(folder: Path) -> None:
    """Take group and others' write permission from this user's entries in ``folder`` (made with
    a permissive umask), so that :func:`unsafe_tree` accepts them; links are left alone."""
    for parent, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            entry = Path(parent) / name
            st = os.lstat(entry)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                os.chmod(entry, stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def open_private(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """Open ``path`` (created 0600 where ``flags`` ask) without following a link, truncating
    nothing, and return its descriptor; ``OSError`` if it is a link or :func:`unsafe_reason`
    refuses the file it opened."""
    if os.path.islink(path):  # said plainly; O_NOFOLLOW still guards the open itself
        raise OSError(errno.EPERM, f"{path} is a symbolic link; refused")
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
    problem = unsafe_reason(path, os.fstat(fd))
    if problem:
        os.close(fd)
        raise OSError(errno.EPERM, f"{problem}; refused")
    return fd
