"""Reading PyTorch ``.pth`` checkpoints without torch and without running pickle code.

Two layouts exist. Since torch 1.6 a ``torch.save`` file is a zip archive: ``<name>/data.pkl``
describes the objects, and each tensor storage is a raw little-endian member
``<name>/data/<key>``, stored, never compressed. Older files (and
``_use_new_zipfile_serialization=False``) are "legacy": a magic-number pickle, the protocol
version, a ``sys_info`` pickle, the main pickle, the list of storage keys, then each storage as
an 8-byte element count and its raw bytes. Both pickles are read by :mod:`converter.safe_pickle`
with one allowlist (tensors, storages, plain containers, numbers, and ``argparse.Namespace``
turned into inert data); tensors become :class:`~converter.lazy.Lazy` arrays, read from their
storages only when loaded, and every storage is checked to lie inside the file before any of
it is read.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import safe_pickle
from .errors import CoatError, ConversionError, UnsafePickleError
from .lazy import Lazy
from .safetensors_io import bfloat16

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
    "BFloat16Storage": None,  # ml_dtypes' bfloat16, imported when a checkpoint holds one
}
MAX_MEMBERS = 100_000  # a training checkpoint of coat_lite_medium has 1,526
MAX_PICKLE_BYTES = 64 << 20  # its data.pkl has about 200 KB
_MAX_NUMEL = 1 << 50


class _StorageType:
    """What ``torch.FloatStorage`` etc. name in a pickle: a dtype, and nothing to change."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self._name] or bfloat16()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("storage types are immutable")

    def __repr__(self) -> str:
        return f"torch.{self._name}"


class _Storage:
    """One tensor storage of a checkpoint: ``numel`` elements of ``dtype`` at a place in the
    file, read when a tensor over it is loaded."""

    def __init__(self, path: Path, name: str, dtype: np.dtype, numel: int) -> None:
        self.path, self.name, self.dtype, self.numel = path, name, dtype, numel

    def raw(self) -> np.ndarray:
        raise NotImplementedError

    def read(self) -> np.ndarray:
        try:
            raw = self.raw()
        except CoatError:
            raise
        except Exception as e:
            raise ConversionError(
                f"{self.path}: tensor data {self.name} is unreadable "
                f"({type(e).__name__}: {e}); the file may be corrupt"
            ) from None
        return np.frombuffer(raw, dtype=self.dtype, count=self.numel)


def _read_exactly(f: BinaryIO, start: int, nbytes: int) -> np.ndarray:
    f.seek(start)
    data = np.empty(nbytes, dtype=np.uint8)
    if f.readinto(memoryview(data)) != nbytes:
        raise ValueError("the file ended early or changed while being read")
    return data


def _positive_int(value: Any) -> bool:
    return type(value) is int and 0 <= value < _MAX_NUMEL


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_unused: Any) -> Lazy:
    """The tensor that ``storage``, ``offset``, ``size``, ``stride`` describe, read on demand."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"a tensor is rebuilt from {safe_pickle.brief(storage)}, not a storage")
    if not (
        _positive_int(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride) <= 32
        and all(map(_positive_int, size + stride))
    ):
        raise UnsafePickleError(
            f"tensor geometry size={safe_pickle.brief(size)} stride={safe_pickle.brief(stride)} "
            f"offset={safe_pickle.brief(offset)} is invalid; sizes, strides and the offset must be "
            "non-negative integers"
        )
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel:
        raise UnsafePickleError(
            f"tensor of size {size} reads past its storage {storage.name} of {storage.numel} elements"
        )

    def load() -> np.ndarray:
        if 0 in size:
            return np.zeros(size, dtype=storage.dtype)
        data = storage.read()
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=[s * data.itemsize for s in stride], writeable=False
        )
        return np.ascontiguousarray(view)

    return Lazy(size, storage.dtype, load, identity=(storage.name, offset, size, stride))


def _rebuild_parameter(data: Any, *_unused: Any) -> Lazy:
    if not isinstance(data, Lazy):
        raise UnsafePickleError(f"a parameter is rebuilt from {safe_pickle.brief(data)}, not a tensor")
    return data


TORCH_ALLOWED: dict[tuple[str, str], Any] = {
    **safe_pickle.NUMPY_ALLOWED,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("argparse", "Namespace"): safe_pickle.inert_class("Namespace"),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


def _storage_pid(pid: Any, length: int) -> tuple[np.dtype, str, int, Any]:
    """(dtype, key, numel, rest) of a persistent id ``("storage", type, key, location, numel, ...)``."""
    if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
        raise UnsafePickleError(f"unknown persistent id {safe_pickle.brief(pid)}")
    _, storage_type, key, _location, numel, *rest = pid
    if not isinstance(storage_type, _StorageType):
        raise UnsafePickleError(f"storage of unknown type {safe_pickle.brief(storage_type)}")
    if type(key) is not str or len(key) > 256 or not _positive_int(numel):
        raise UnsafePickleError(
            f"storage key {safe_pickle.brief(key)} or size {safe_pickle.brief(numel)} is invalid"
        )
    return storage_type.dtype, key, numel, rest


def _in_context(path: Path, e: Exception) -> CoatError:
    """``e`` as the project's one-line error about ``path``."""
    if isinstance(e, CoatError):
        return type(e)(f"{path}: {e}")
    return ConversionError(
        f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); "
        "the file may be truncated or corrupt"
    )


# --- zip archives (torch >= 1.6) ------------------------------------------------------------


class _ZipStorage(_Storage):
    def __init__(self, path: Path, info: zipfile.ZipInfo, dtype: np.dtype, numel: int) -> None:
        super().__init__(path, info.filename, dtype, numel)
        self.info = info

    def raw(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            return _member_bytes(f, self.info, self.path.stat().st_size)


def _member_bytes(f: BinaryIO, info: zipfile.ZipInfo, size: int) -> np.ndarray:
    """A stored member's bytes, read straight into an array after checking that they lie
    inside the file, CRC checked."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local file header for {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise ValueError(f"member {info.filename!r} of {info.file_size} bytes runs past the end of the file")
    data = _read_exactly(f, start, info.file_size)
    if zlib.crc32(data) != info.CRC:
        raise ValueError(f"bad CRC-32 for file {info.filename!r}")
    return data


def _zip_directory_size(f: BinaryIO, size: int) -> tuple[int, int]:
    """(member count, central directory bytes) from the zip's end records, read before
    ``zipfile`` parses the directory, so a directory of millions of names is refused unread."""
    tail = min(size, 22 + 0xFFFF)
    f.seek(size - tail)
    data = f.read(tail)
    at = data.rfind(b"PK\x05\x06")
    if at < 0 or len(data) - at < 22:
        raise ValueError("no zip end-of-central-directory record")
    _, _, _, _, entries, cd_size, _, _ = struct.unpack("<4s4H2LH", data[at : at + 22])
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:  # zip64: the locator sits just before
        locator = size - tail + at - 20
        if locator < 0:
            raise ValueError("zip64 locator missing")
        f.seek(locator)
        sig, _, record, _ = struct.unpack("<4sLQL", f.read(20))
        if sig != b"PK\x06\x07" or record + 56 > size:
            raise ValueError("bad zip64 locator")
        f.seek(record)
        fields = struct.unpack("<4sQ2H2L4Q", f.read(56))
        if fields[0] != b"PK\x06\x06":
            raise ValueError("bad zip64 end record")
        entries, cd_size = fields[7], fields[8]
    return entries, cd_size


def _open_archive(path: Path, size: int) -> zipfile.ZipFile:
    with open(path, "rb") as f:
        entries, cd_size = _zip_directory_size(f, size)
    if entries > MAX_MEMBERS or cd_size > min(size, MAX_MEMBERS * 1024):
        raise ConversionError(
            f"the zip archive lists {entries} members in {cd_size} bytes; a torch checkpoint has "
            f"at most {MAX_MEMBERS}, so it was refused unread"
        )
    archive = zipfile.ZipFile(path)
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
            raise ConversionError(
                f"member {info.filename!r} is compressed or encrypted; torch.save never compresses, "
                "so this is not a torch checkpoint (and a compressed member can inflate without bound)"
            )
        if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
            raise ConversionError(f"member {info.filename!r} does not fit inside the file")
    return archive


class _ZipStorages:
    def __init__(self, path: Path, archive: zipfile.ZipFile, root: str) -> None:
        self.path, self.archive, self.root = path, archive, root
        self.storages: dict[str, _ZipStorage] = {}

    def __call__(self, pid: Any) -> _ZipStorage:
        dtype, key, numel, _ = _storage_pid(pid, 5)
        if key not in self.storages:
            member = f"{self.root}/data/{key}"
            try:
                info = self.archive.getinfo(member)
            except KeyError:
                raise ConversionError(f"the archive lacks the storage member {member}") from None
            if info.file_size < numel * dtype.itemsize:
                raise ConversionError(
                    f"storage {member} holds {info.file_size} bytes, "
                    f"{numel} elements of {dtype} expected; the file is corrupt"
                )
            self.storages[key] = _ZipStorage(self.path, info, dtype, numel)
        storage = self.storages[key]
        if storage.dtype != dtype or storage.numel != numel:
            raise ConversionError(f"storage {key} is described twice, differently")
        return storage


def is_torch_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` zip archive holds, tensors as :class:`Lazy` arrays."""
    path = Path(path)
    try:
        size = path.stat().st_size
        archive = _open_archive(path, size)
        with archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ConversionError("a zip archive but not a torch checkpoint (no single data.pkl)")
            root = pickles[0][: -len("/data.pkl")]
            byteorder = f"{root}/byteorder"
            if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
                raise ConversionError("big-endian checkpoints are not supported")
            info = archive.getinfo(pickles[0])
            if info.file_size > MAX_PICKLE_BYTES:
                raise ConversionError(
                    f"data.pkl has {info.file_size} bytes, more than the "
                    f"{MAX_PICKLE_BYTES} any checkpoint needs"
                )
            with open(path, "rb") as f:
                data = _member_bytes(f, info, size).tobytes()
            return safe_pickle.loads(data, TORCH_ALLOWED, persistent_load=_ZipStorages(path, archive, root))
    except Exception as e:  # corrupt zips and pickles fail in many ways
        raise _in_context(path, e) from None


# --- legacy files (torch < 1.6, or _use_new_zipfile_serialization=False) --------------------

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_HEAD_LIMITS = safe_pickle.Limits(depth=8, opcodes=1000)


class _LegacyStorage(_Storage):
    start: int | None = None  # where its bytes begin, known once the pickles are read

    def raw(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            return _read_exactly(f, self.start, self.numel * self.dtype.itemsize)


class _LegacyView(_Storage):
    """A view into another storage (``view_metadata`` of files from torch < 1.0)."""

    def __init__(self, base: _LegacyStorage, offset: int, numel: int) -> None:
        super().__init__(base.path, f"{base.name}[{offset}:]", base.dtype, numel)
        self.base, self.offset = base, offset

    def raw(self) -> np.ndarray:
        return self.base.read()[self.offset : self.offset + self.numel].view(np.uint8)


class _LegacyStorages:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.storages: dict[str, _LegacyStorage] = {}

    def __call__(self, pid: Any) -> _Storage:
        dtype, key, numel, (view,) = _storage_pid(pid, 6)
        storage = self.storages.setdefault(key, _LegacyStorage(self.path, key, dtype, numel))
        if storage.dtype != dtype or storage.numel != numel:
            raise ConversionError(f"storage {key} is described twice, differently")
        if view is None:
            return storage
        if not (
            isinstance(view, tuple)
            and len(view) == 3
            and _positive_int(view[1])
            and _positive_int(view[2])
            and view[1] + view[2] <= numel
        ):
            raise UnsafePickleError(f"storage view {safe_pickle.brief(view)} is invalid")
        return _LegacyView(storage, view[1], view[2])


def is_legacy_torch(path: Path) -> bool:
    """Whether the file starts with the magic-number pickle of the legacy torch format."""
    with open(path, "rb") as f:
        if f.read(1) != b"\x80":
            return False
        f.seek(0)
        try:
            return safe_pickle.load(f, {}, limits=_HEAD_LIMITS) == MAGIC_NUMBER
        except (CoatError, ValueError):
            return False


def load_legacy_torch_file(path: str | Path) -> Any:
    """The object a legacy ``torch.save`` file holds, tensors as :class:`Lazy` arrays."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if safe_pickle.load(f, {}, limits=_HEAD_LIMITS, end=size) != MAGIC_NUMBER:
                raise ConversionError("not a legacy torch file (no magic number)")
            if safe_pickle.load(f, {}, limits=_HEAD_LIMITS, end=size) != PROTOCOL_VERSION:
                raise ConversionError("a legacy torch file of an unknown protocol version")
            info = safe_pickle.load(f, {}, limits=_HEAD_LIMITS, end=size)
            if not isinstance(info, dict) or info.get("little_endian") is not True:
                raise ConversionError("big-endian (or undescribed) legacy checkpoints are not supported")
            storages = _LegacyStorages(path)
            obj = safe_pickle.load(f, TORCH_ALLOWED, persistent_load=storages, end=size)
            keys = safe_pickle.load(f, {}, end=size)
            if not (isinstance(keys, list) and all(type(k) is str for k in keys)):
                raise ConversionError("the list of storage keys is missing or malformed")
            if set(keys) != storages.storages.keys() or len(keys) != len(set(keys)):
                raise ConversionError(
                    "the list of storage keys does not match the storages the pickle refers to"
                )
            position = f.tell()
            for key in keys:
                storage = storages.storages[key]
                record = f.read(8)
                if len(record) != 8:
                    raise ConversionError(f"storage {key} is missing; the file is truncated")
                (numel,) = struct.unpack("<q", record)
                nbytes = storage.numel * storage.dtype.itemsize
                if numel != storage.numel or position + 8 + nbytes > size:
                    raise ConversionError(
                        f"storage {key} records {numel} elements, {storage.numel} expected, or runs "
                        "past the end of the file; the file is truncated or corrupt"
                    )
                storage.start = position + 8
                position = f.seek(storage.start + nbytes)
            return obj
    except Exception as e:
        raise _in_context(path, e) from None


def load_any_torch_file(path: str | Path) -> Any:
    """:func:`load_torch_file` or :func:`load_legacy_torch_file`, whichever fits the file."""
    return load_torch_file(path) if is_torch_zip(Path(path)) else load_legacy_torch_file(path)
