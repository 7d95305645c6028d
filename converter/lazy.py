"""Tensors known by shape and dtype, whose data is read only when it is needed.

Conversion streams: a checkpoint's tensors are read one at a time, mapped and written, so
memory stays near the size of the largest tensor instead of the whole model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Lazy:
    """A tensor of ``shape`` and ``dtype``; ``load()`` reads it.

    ``identity`` names where the data lives (e.g. storage, offset, strides): two tensors with
    the same identity hold the same values without reading either.
    """

    __slots__ = ("shape", "dtype", "_load", "identity")

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype,
        load: Callable[[], np.ndarray],
        identity: Hashable | None = None,
    ) -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._load = load
        self.identity = identity

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def load(self) -> np.ndarray:
        return self._load()

    def same_as(self, other: object) -> bool:
        return isinstance(other, Lazy) and self.identity is not None and self.identity == other.identity

    def __repr__(self) -> str:
        return f"Lazy(shape={self.shape}, dtype={self.dtype})"


def materialize(x) -> np.ndarray:
    """The array behind ``x``, read now if it is :class:`Lazy`."""
    return x.load() if isinstance(x, Lazy) else x


def prefetch(tensors: Iterable, ahead: int = 4) -> Iterator[np.ndarray]:
    """The arrays of ``tensors``, in order, each read (and prepared) by background threads
    up to ``ahead`` tensors before it is needed: reading overlaps with writing, and memory
    holds a few tensors, not all."""
    tensors = list(tensors)
    with ThreadPoolExecutor(max_workers=2) as pool:  # numpy copies and file reads free the GIL
        pending: deque = deque()
        for tensor in tensors:
            pending.append(pool.submit(materialize, tensor))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
