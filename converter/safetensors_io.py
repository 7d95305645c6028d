"""The safetensors format on numpy, bfloat16 included (through ``ml_dtypes``, imported only
when a bfloat16 tensor is met: its import costs more than converting a float32 checkpoint).

A file is an 8-byte little-endian header length, a JSON header (``name -> dtype, shape,
data_offsets`` plus an optional ``__metadata__`` of strings), then the raw little-endian
tensor bytes. Reading is the ``safetensors`` package's (validated by its fuzzed Rust core);
writing is :func:`serialize` here, which streams tensor by tensor (the package's writers take
every tensor in memory at once), and is tested against the package's reader.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from safetensors import safe_open

from .errors import WeightsError
from .lazy import Lazy

DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@lru_cache(maxsize=1)
def bfloat16() -> np.dtype:
    """numpy's bfloat16 (``ml_dtypes``), imported on first use; importing it also makes
    safetensors' numpy side know bfloat16."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype) -> bool:
    """Whether ``dtype`` is bfloat16, without importing ``ml_dtypes`` to ask."""
    return np.dtype(dtype).name == "bfloat16"


def dtype_of(name: str) -> np.dtype | None:
    """The numpy dtype of a safetensors dtype name, or None for one CoaT weights never use."""
    return bfloat16() if name == "BF16" else DTYPES.get(name)


def _name_of(dtype: np.dtype) -> str | None:
    return "BF16" if is_bfloat16(dtype) else _NAMES.get(dtype)


def _fail(path, why: str) -> WeightsError:
    return WeightsError(f"{path}: not a valid .safetensors file ({why})")


def open_file(path: str | os.PathLike) -> tuple[dict[str, Lazy], dict[str, str]]:
    """(tensors, metadata) of the safetensors file at ``path``, each tensor read when loaded.

    The file is parsed by the ``safetensors`` package (``safe_open``, numpy framework): its
    Rust core validates the header (types, ranges, overflow, offsets covering the data
    exactly) and maps the file, so nothing is read before it is asked for. Only the dtypes
    of :data:`DTYPES` are accepted.
    """
    try:
        handle = safe_open(str(path), framework="numpy")
        metadata = handle.metadata() or {}
        state = {}
        for name in handle.keys():
            view = handle.get_slice(name)
            dtype = dtype_of(view.get_dtype())
            if dtype is None:
                raise _fail(
                    path,
                    f"tensor {name!r} has dtype {view.get_dtype()}, which CoaT weights "
                    f"never use (expected one of {', '.join([*DTYPES, 'BF16'])})",
                )
            state[name] = Lazy(tuple(view.get_shape()), dtype, _loader(handle, name, dtype, path))
    except WeightsError:
        raise
    except Exception as e:  # SafetensorError, and OSError for unreadable files
        raise _fail(path, one_line(str(e))) from None
    return state, metadata


def _loader(handle, name: str, dtype: np.dtype, path):
    def load() -> np.ndarray:
        try:
            array = handle.get_tensor(name)
        except Exception as e:
            raise _fail(path, f"tensor {name!r} is unreadable: {one_line(str(e))}") from None
        return array.view(dtype) if array.dtype != dtype else array

    return load


def read_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of the safetensors file at ``path``, every tensor read."""
    state, metadata = open_file(path)
    return {name: tensor.load() for name, tensor in state.items()}, metadata


def one_line(text: str) -> str:
    return " ".join(text.split())


def _little_endian(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def _load_each(tensors):
    for tensor in tensors:
        yield tensor.load() if hasattr(tensor, "load") else tensor


def serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None, load=None):
    """The bytes of a safetensors file holding ``tensors`` in the given order, as chunks.

    A value may also be any object with ``shape``, ``dtype`` and ``load()`` (a lazily read
    tensor): the header needs only the first two, and each is loaded when its turn comes,
    by ``load(values)`` (an iterator of arrays in order) when given.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, tensor in tensors.items():
        dtype = _little_endian(tensor.dtype)
        kind = _name_of(dtype)
        if kind is None:
            raise WeightsError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
        nbytes = int(np.prod(tensor.shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": kind,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    yield struct.pack("<Q", len(text)) + text
    for array in (load or _load_each)(tensors.values()):
        array = np.ascontiguousarray(array).astype(_little_endian(array.dtype), copy=False)
        yield memoryview(array.reshape(-1).view(np.uint8))


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether the file starts like a safetensors file (header length, then ``{``)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"
