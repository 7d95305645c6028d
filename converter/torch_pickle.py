"""Reading PyTorch ``.pth`` checkpoints without torch and without running pickle code.

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` describes the objects, and each
tensor storage is a raw little-endian file ``<name>/data/<key>``. The pickle is read with an
allowlist (tensors, storages, plain containers, numbers, and ``argparse.Namespace`` turned into
inert data); tensors become numpy arrays viewed from their storages.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from paddle_model.errors import CoatError
from paddle_model.safe_pickle import NUMPY_ALLOWED, RestrictedUnpickler, inert_class

from .errors import ConversionError

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


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_unused) -> np.ndarray:
    """A numpy copy of the tensor that ``storage``, ``offset``, ``size``, ``stride`` describe."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise ValueError(f"tensor geometry size={size} stride={stride} offset={offset} is invalid")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ValueError(
            f"tensor of size {size} reads past its storage of {storage.size} elements")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride], writeable=False)
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_unused) -> np.ndarray:
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
        self._storages: dict[str, np.ndarray] = {}

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"storage of unknown type {storage_type!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}/data/{key}")
            dtype = _STORAGE_DTYPES[storage_type.name]
            if len(raw) < int(numel) * dtype.itemsize:
                raise ValueError(f"storage {key} holds {len(raw)} bytes, {numel} elements expected")
            self._storages[key] = np.frombuffer(raw, dtype=dtype, count=int(numel))
        return self._storages[key]


def is_torch_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` zip archive holds, tensors as numpy arrays."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
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
