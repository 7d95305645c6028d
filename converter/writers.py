"""Writing Paddle-layout state dicts: ``.pdparams`` and ``.safetensors``, atomically, and
:func:`atomic_write`, the one way this project writes a file.

A ``.pdparams`` file is the pickle ``paddle.save`` writes for a state dict (key -> numpy
array), so ``paddle.load`` reads it too; aliased keys share one array, which pickle stores
once, and bfloat16 is stored as uint16 bits, as Paddle does. A ``.safetensors`` file keeps one
name per shared tensor and records the others in its metadata (``alias -> kept name``), as
``safetensors.torch.save_model`` does.
"""

from __future__ import annotations

import errno
import os
import pickle
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import safetensors_io
from .errors import ConversionError
from .lazy import prefetch
from .safetensors_io import is_bfloat16

PADDLE_FORMATS = (".pdparams", ".safetensors")
TORCH_FORMATS = (".pth", ".pt", ".safetensors")


def check_destination(path: Path, force: bool, formats=PADDLE_FORMATS) -> None:
    """Refuse a destination that cannot or should not be written."""
    if path.suffix not in formats:
        raise ConversionError(
            f"{path}: unknown output format {path.suffix!r}; name it {' or '.join(formats)}"
        )
    if not path.parent.is_dir():
        raise ConversionError(f"{path}: the directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise ConversionError(f"{path}: is a directory; give a file name")
    if path.exists() and not force:
        raise ConversionError(f"{path}: already exists; pass --force to overwrite it")


def _no_clobber(path: Path) -> ConversionError:
    return ConversionError(f"{path}: already exists; pass --force to overwrite it")


def _unique_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _publish(fd: int, path: Path, force: bool) -> None:
    """Give the unnamed file ``fd`` (``O_TMPFILE``) the name ``path``: ``link(2)`` fails if
    ``path`` exists, so no other writer is clobbered; with ``force``, link to a unique name
    and rename over ``path``, which replaces it atomically."""
    if not force:
        try:
            _link(fd, path)
        except FileExistsError:
            raise _no_clobber(path) from None
        return
    tmp = _unique_name(path)
    _link(fd, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _link(fd: int, path: Path) -> None:
    """``linkat(AT_SYMLINK_FOLLOW)`` of ``/proc/self/fd/FD`` to ``path``. A directory fd is
    given because ``os.link`` calls plain ``link(2)`` otherwise, which does not follow the
    magic link (and fails with EXDEV)."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


def _open_unnamed(folder: Path) -> int | None:
    """A file in ``folder`` that has no name yet (``O_TMPFILE``), or None where the system
    or file system has none (then a named temporary file is used)."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


def _named_temp(path: Path, write: Callable[[BinaryIO], None], force: bool) -> None:
    """The fallback: a hidden temporary file beside ``path``, removed on any failure and on
    SIGINT/SIGTERM (:func:`converter.cli.command` turns both into exceptions); a SIGKILL can
    leave it behind."""
    tmp = _unique_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise _no_clobber(path) from None
            os.unlink(tmp)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, write: Callable[[BinaryIO], None], force: bool = False) -> None:
    """Write ``path`` through ``write(file)``, all or nothing: the data goes to a file without a
    name in the same folder (nothing is left behind by a failure, a signal, or a SIGKILL), which
    is named ``path`` only when complete. An existing ``path`` is never overwritten unless
    ``force``, even by a writer that finished first in another process. ``OSError`` (disk
    full, read-only or unwritable folder) is raised with ``path`` as its file name."""
    path = Path(path)
    try:
        fd = _open_unnamed(path.parent)
        if fd is None:
            _named_temp(path, write, force)
            return
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            _publish(f.fileno(), path, force)
    except OSError as e:
        if e.filename is not None and Path(e.filename) == path:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


class _Pickled:
    """Pickles exactly as the array it stands for (numpy's own ``_reconstruct`` and state
    tuple), taken from ``arrays`` (read ahead, in order) only when pickle reaches it: the file
    is written while the next tensors load.

    The tensor bytes go in as a read-only :class:`pickle.PickleBuffer`, which protocol 5
    writes in-band as ``BINBYTES`` straight from the array. The pickler's memo keeps every
    object it wrote until the end, so each buffer is released once written (when the next
    tensor is reached, or at the end): memory holds a few tensors, not the model, with the
    standard C pickler.
    """

    _RECONSTRUCT = np.empty(0).__reduce_ex__(4)[:2]  # (numpy's _reconstruct, its args)

    def __init__(self, arrays: Iterator[np.ndarray], written: list[pickle.PickleBuffer]) -> None:
        self.arrays, self.written = arrays, written

    def __reduce_ex__(self, protocol):
        release(self.written)  # everything handed out before was written by now
        array = np.ascontiguousarray(next(self.arrays))
        if is_bfloat16(array.dtype):
            array = array.view(np.uint16)  # Paddle's own encoding of bfloat16
        view = array.view()
        view.flags.writeable = False  # read-only: written as BINBYTES, read back as bytes
        buffer = pickle.PickleBuffer(view)
        self.written.append(buffer)
        return (*self._RECONSTRUCT, (1, array.shape, array.dtype, False, buffer))


def release(buffers: list[pickle.PickleBuffer]) -> None:
    while buffers:
        buffers.pop().release()


def write_pdparams(state: Mapping[str, np.ndarray], path: Path, force: bool = False) -> None:
    unique = list({id(t): t for t in state.values()}.values())  # in the order pickle meets them
    arrays = prefetch(unique)
    written: list[pickle.PickleBuffer] = []
    wrapped = {id(t): _Pickled(arrays, written) for t in unique}  # one per shared tensor: stored once
    out = {key: wrapped[id(tensor)] for key, tensor in state.items()}
    try:
        atomic_write(path, lambda f: pickle.Pickler(f, protocol=5).dump(out), force)
    finally:
        release(written)
        arrays.close()


def write_safetensors(
    state: Mapping[str, np.ndarray],
    path: Path,
    aliases: Mapping[str, str],
    metadata: Mapping[str, str],
    force: bool = False,
) -> None:
    kept = {k: v for k, v in state.items() if k not in aliases}
    header = {**metadata, **aliases}

    def write(f) -> None:
        for chunk in safetensors_io.serialize(kept, header, load=prefetch):
            f.write(chunk)

    atomic_write(path, write, force)


def write_state_dict(
    state: Mapping[str, np.ndarray],
    path: Path,
    aliases: Mapping[str, str],
    metadata: Mapping[str, str],
    force: bool = False,
) -> None:
    """Write ``state`` in the format ``path``'s suffix names (replacing it only if ``force``)."""
    if path.suffix == ".safetensors":
        write_safetensors(state, path, aliases, metadata, force)
    else:
        write_pdparams(state, path, force)
