"""Unpickling that never runs code: every global a pickle names must be on an allowlist.

``pickle.load`` (and so ``paddle.load``) calls whatever a file tells it to. Checkpoints from
the internet are data; this reader treats them as data and refuses anything else by name.
"""
from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import IO, Any, Mapping

import numpy as np

from .errors import UnsafePickleError


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals numpy's own pickles of arrays, dtypes and scalars name (numpy 1 and 2)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _Inert:
    """Stand-in for an allowed plain-data class (e.g. ``argparse.Namespace``): holds attributes, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__!r})"


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` answers only from ``allowed``."""

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Any]) -> None:
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"the pickle asks for {module}.{name}, which is not plain tensor data; "
                "it was refused and nothing in the file was executed"
            ) from None


NUMPY_ALLOWED: Mapping[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("collections", "OrderedDict"): OrderedDict,
}


def inert_class(name: str) -> type:
    """A fresh attribute-holder class named ``name``, to stand in for a plain-data class."""
    return type(name, (_Inert,), {})
