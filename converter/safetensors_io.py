"""The safetensors format on numpy alone, bfloat16 included (through ``ml_dtypes``).

A file is an 8-byte little-endian header length, a JSON header (``name -> dtype, shape,
data_offsets`` plus an optional ``__metadata__`` of strings), then the raw little-endian
tensor bytes. Reading validates all of it, so a damaged file is refused, never misread.
Files written here are read by the ``safetensors`` package and the other way round.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import BinaryIO, Mapping

import ml_dtypes
import numpy as np

from .errors import WeightsError

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER = 100 << 20


def _fail(path, why: str) -> WeightsError:
    return WeightsError(f"{path}: not a valid .safetensors file ({why})")


def read_header(f: BinaryIO, size: int, path="file") -> tuple[dict, dict[str, str], int]:
    """(tensor entries, metadata, offset of the data) of an open safetensors file."""
    raw = f.read(8)
    if len(raw) < 8:
        raise _fail(path, "shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", raw)
    if n > min(_MAX_HEADER, size - 8):
        raise _fail(path, f"header length {n} does not fit a file of {size} bytes")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _fail(path, "__metadata__ must map strings to strings")
    data_size = size - 8 - n
    spans = []
    for name, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _fail(path, f"bad entry for {name!r}") from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size \
                or end - begin != count * dtype.itemsize:
            raise _fail(path, f"entry {name!r} does not fit the data")
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _fail(path, "tensor data overlaps or leaves gaps")
        position = end
    if position != data_size:
        raise _fail(path, "data does not end where the tensors do")
    return header, metadata, 8 + n


def read_tensor(f: BinaryIO, start: int, entry: dict, path="file") -> np.ndarray:
    """The tensor a checked header ``entry`` describes, read from the open file ``f``
    (``start``: where the data begins, as :func:`read_header` returns it)."""
    begin, end = entry["data_offsets"]
    f.seek(start + begin)
    buf = f.read(end - begin)
    if len(buf) != end - begin:
        raise _fail(path, "the file ended early or changed while being read")
    return np.frombuffer(buf, dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])


def read_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of the safetensors file at ``path``."""
    path = Path(path)
    with open(path, "rb") as f:
        header, metadata, start = read_header(f, path.stat().st_size, path)
        tensors = {name: read_tensor(f, start, entry, path) for name, entry in header.items()}
    return tensors, metadata


def _little_endian(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def _load_each(tensors):
    for tensor in tensors:
        yield tensor.load() if hasattr(tensor, "load") else tensor


def serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
              load=None):
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
        if dtype not in _NAMES:
            raise WeightsError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
        nbytes = int(np.prod(tensor.shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
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
