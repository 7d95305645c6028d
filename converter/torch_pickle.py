"""Reading PyTorch ``.pth`` checkpoints without torch and without running pickle code.

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` describes the objects, and each
tensor storage is a raw little-endian file ``<name>/data/<key>``. The pickle is read with an
allowlist (tensors, storages, plain containers, numbers, and ``argparse.Namespace`` turned into
inert data); tensors become :class:`~converter.lazy.Lazy` arrays, read from their storages
only when loaded.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .errors import CoatError
from .safe_pickle import NUMPY_ALLOWED, RestrictedUnpickler, inert_class

from .errors import ConversionError
from .lazy import Lazy

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "DoubleStorage": np.dtype("<f8"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _Storage:
    """One tensor storage of the archive, read when a tensor over it is loaded."""

    def __init__(self, archive: zipfile.ZipFile, member: str, dtype: np.dtype, numel: int) -> None:
        self.archive, self.member, self.dtype, self.numel = archive, member, dtype, numel

    def _raw(self):
        """The member's bytes. Stored members (torch writes no others) are read straight into
        an array, CRC checked; anything else goes through ``zipfile``."""
        info = self.archive.getinfo(self.member)
        if info.compress_type != zipfile.ZIP_STORED:
            return self.archive.read(self.member)
        with open(self.archive.filename, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise ValueError("bad local file header")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            data = np.empty(info.file_size, dtype=np.uint8)
            if f.readinto(memoryview(data)) != info.file_size:
                raise ValueError("truncated member")
        if zlib.crc32(data) != info.CRC:
            raise ValueError(f"bad CRC-32 for file {self.member!r}")
        return data

    def read(self) -> np.ndarray:
        try:
            raw = self._raw()
        except Exception as e:
            raise ConversionError(f"{self.archive.filename}: tensor data {self.member} is unreadable "
                                  f"({type(e).__name__}: {e}); the file may be corrupt") from None
        if len(raw) < self.numel * self.dtype.itemsize:
            raise ConversionError(f"{self.archive.filename}: storage {self.member} holds {len(raw)} "
                                  f"bytes, {self.numel} elements expected; the file is corrupt")
        return np.frombuffer(raw, dtype=self.dtype, count=self.numel)


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_unused) -> Lazy:
    """The tensor that ``storage``, ``offset``, ``size``, ``stride`` describe, read on demand."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise ValueError(f"tensor geometry size={size} stride={stride} offset={offset} is invalid")
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel:
        raise ValueError(f"tensor of size {size} reads past its storage of {storage.numel} elements")

    def load() -> np.ndarray:
        if 0 in size:
            return np.zeros(size, dtype=storage.dtype)
        data = storage.read()
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=[s * data.itemsize for s in stride], writeable=False)
        return np.ascontiguousarray(view)

    return Lazy(size, storage.dtype, load, identity=(storage.member, offset, size, stride))


def _rebuild_parameter(data: Lazy, *_unused) -> Lazy:
    return data


_TORCH_ALLOWED: dict[tuple[str, str], Any] = {
    **NUMPY_ALLOWED,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("argparse", "Namespace"): inert_class("Namespace"),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _TorchUnpickler(RestrictedUnpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data), _TORCH_ALLOWED)
        self._archive = archive
        self._root = root
        self._storages: dict[str, _Storage] = {}

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"storage of unknown type {storage_type!r}")
        if key not in self._storages:
            member = f"{self._root}/data/{key}"
            self._archive.getinfo(member)  # KeyError if the archive lacks it
            self._storages[key] = _Storage(self._archive, member, _STORAGE_DTYPES[storage_type.name],
                                           int(numel))
        return self._storages[key]


def is_torch_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` zip archive holds, tensors as :class:`Lazy` arrays.

    The archive stays open for the tensors to be read; it closes when they are all gone.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ConversionError("a zip archive but not a torch checkpoint (no single data.pkl)")
        root = pickles[0][: -len("/data.pkl")]
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
            raise ConversionError("big-endian checkpoints are not supported")
        return _TorchUnpickler(archive.read(pickles[0]), archive, root).load()
    except CoatError as e:
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:  # corrupt zips and pickles fail in many ways
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); "
            "the file may be truncated or corrupt") from None
