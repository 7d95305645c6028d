"""Writing Paddle-layout state dicts: ``.pdparams`` and ``.safetensors``, atomically.

A ``.pdparams`` file is the pickle ``paddle.save`` writes for a state dict (key -> numpy
array), so ``paddle.load`` reads it too; aliased keys share one array, which pickle stores
once, and bfloat16 is stored as uint16 bits, as Paddle does. A ``.safetensors`` file keeps one name per shared tensor and records the others in its
metadata (``alias -> kept name``), as ``safetensors.torch.save_model`` does.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from . import safetensors_io
from .paddle_weights import BFLOAT16

from .errors import ConversionError
from .lazy import prefetch

PADDLE_FORMATS = (".pdparams", ".safetensors")
TORCH_FORMATS = (".pth", ".pt", ".safetensors")


def check_destination(path: Path, force: bool, formats=PADDLE_FORMATS) -> None:
    """Refuse a destination that cannot or should not be written."""
    if path.suffix not in formats:
        raise ConversionError(
            f"{path}: unknown output format {path.suffix!r}; name it {' or '.join(formats)}")
    if not path.parent.is_dir():
        raise ConversionError(f"{path}: the directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise ConversionError(f"{path}: is a directory; give a file name")
    if path.exists() and not force:
        raise ConversionError(f"{path}: already exists; pass --force to overwrite it")


def atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Write through a temporary file in the same folder, renamed into place when complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class _Pickled:
    """Pickles exactly as the array it stands for, taken from ``arrays`` (read ahead, in
    order) only when pickle reaches it: the file is written while the next tensors load."""

    def __init__(self, arrays: Iterator[np.ndarray]) -> None:
        self.arrays = arrays

    def __reduce_ex__(self, protocol):
        array = next(self.arrays)
        if array.dtype == BFLOAT16:
            array = array.view(np.uint16)  # Paddle's own encoding of bfloat16
        return array.__reduce_ex__(protocol)


class _StreamingPickler(pickle._Pickler):
    """A pickler that does not keep tensor bytes in its memo, so each is freed once written.

    Only identical bytes objects could refer back to them, and tensors share by the object
    that wraps them, which stays memoized: aliases are still written once.
    """

    def memoize(self, obj) -> None:
        if self._holds_data(obj):
            return
        super().memoize(obj)

    @staticmethod
    def _holds_data(obj) -> bool:
        """Tensor bytes, or the state tuple around them (``ndarray.__reduce__``'s)."""
        if isinstance(obj, bytes):
            return len(obj) > 256
        return isinstance(obj, tuple) and any(isinstance(x, bytes) and len(x) > 256 for x in obj)


def write_pdparams(state: Mapping[str, np.ndarray], path: Path) -> None:
    unique = list({id(t): t for t in state.values()}.values())  # in the order pickle meets them
    arrays = prefetch(unique)
    wrapped = {id(t): _Pickled(arrays) for t in unique}  # one object per shared tensor: stored once
    out = {key: wrapped[id(tensor)] for key, tensor in state.items()}
    try:
        atomic_write(path, lambda f: _StreamingPickler(f, protocol=4).dump(out))
    finally:
        arrays.close()


def write_safetensors(state: Mapping[str, np.ndarray], path: Path,
                      aliases: Mapping[str, str], metadata: Mapping[str, str]) -> None:
    kept = {k: v for k, v in state.items() if k not in aliases}
    header = {**metadata, **aliases}

    def write(f) -> None:
        for chunk in safetensors_io.serialize(kept, header, load=prefetch):
            f.write(chunk)

    atomic_write(path, write)


def write_state_dict(state: Mapping[str, np.ndarray], path: Path, aliases: Mapping[str, str],
                     metadata: Mapping[str, str]) -> None:
    """Write ``state`` in the format ``path``'s suffix names."""
    if path.suffix == ".safetensors":
        write_safetensors(state, path, aliases, metadata)
    else:
        write_pdparams(state, path)
