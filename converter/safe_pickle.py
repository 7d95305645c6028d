"""Unpickling that never runs code, within limits: a small pickle machine over an allowlist.

``pickle.load`` (and so ``paddle.load`` and ``torch.load``) calls whatever a file tells it to,
and even with a restricted ``find_class`` it lets a file mutate the allowed objects (``BUILD``),
nest containers deeply enough to crash the interpreter when they are hashed, or ask numpy for
arrays far larger than the file. Checkpoints from the internet are data, so this module reads
them as data with its own interpreter of the opcodes (decoded by the standard library's
``pickletools.genops``); no library offers an unpickler with these limits, hence this one.

- Globals come from an allowlist of stand-ins; a ``REDUCE`` calls only those, and ``BUILD``
  only fills a fresh object made by this load (never an allowed global, so no state survives
  from one file to the next), once, before it is used anywhere.
- Nesting depth, opcode count, line length and every length a file declares are bounded, and
  every length is checked against the bytes that remain before anything is read.
- numpy arrays must have a numeric dtype and exactly as many bytes as their shape needs; they
  are views of the bytes read from the file (read-only), never allocations a header asks for.
"""

from __future__ import annotations

import io
import pickletools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from .errors import UnsafePickleError


@dataclass(frozen=True)
class Limits:
    """What a pickle may ask for. Real checkpoints use a small fraction of each."""

    depth: int = 100  # nesting of containers (a checkpoint nests fewer than 10)
    opcodes: int = 250_000  # a training checkpoint of coat_lite_medium (the largest) has 58,325
    stack: int = 100_000  # items waiting on the stack (pickle batches containers by 1,000)
    line: int = 1 << 16  # text arguments of protocol 0 opcodes
    ndim: int = 32  # numpy's own maximum is 64


LIMITS = Limits()


class CorruptPickle(ValueError):
    """The opcode stream is malformed (truncated, stack underflow, ...): not a policy refusal."""


def brief(x: Any, room: int = 60) -> str:
    """A short description of an untrusted value for a message: never a full repr (which
    could be gigabytes, or raise for a huge integer)."""
    if x is None or isinstance(x, (bool, float)) or (isinstance(x, int) and x.bit_length() < 128):
        return repr(x)
    if isinstance(x, str):
        return repr(x[:room]) + ("..." if len(x) > room else "")
    if isinstance(x, (bytes, bytearray)):
        return f"{len(x)} bytes"
    if isinstance(x, int):
        return f"an integer of {x.bit_length()} bits"
    if isinstance(x, (tuple, list)) and len(x) <= 8:
        inner = ", ".join(brief(v, room // 4) for v in x)
        return (f"({inner},)" if len(x) == 1 else f"({inner})") if isinstance(x, tuple) else f"[{inner}]"
    if isinstance(x, (tuple, list, dict, set, frozenset)):
        return f"a {type(x).__name__} of {len(x)} items"
    if isinstance(x, np.dtype):
        return f"dtype({x.str})"
    return f"a {type(x).__name__}"


def _refuse(why: str) -> UnsafePickleError:
    return UnsafePickleError(f"{why}; it was refused and nothing in the file was executed")


class _BoundedReader:
    """The reads ``genops`` makes, refused when they ask for more than the stream still holds."""

    def __init__(self, f: IO[bytes], end: int, limits: Limits) -> None:
        self._f, self._end, self._limits = f, end, limits

    def _left(self) -> int:
        return self._end - self._f.tell()

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left():
            raise CorruptPickle(f"an opcode declares {n} bytes but only {self._left()} remain")
        return self._f.read(n)

    def readline(self) -> bytes:
        line = self._f.readline(min(self._limits.line, max(self._left(), 0)) + 1)
        if not line.endswith(b"\n"):
            raise CorruptPickle(f"a text argument is longer than {self._limits.line} bytes or unterminated")
        return line

    def tell(self) -> int:
        return self._f.tell()


class Buildable:
    """A fresh object made during one load that a ``BUILD`` may fill, once, before any use."""

    built = False

    def build(self, state: Any) -> Any:
        """Take ``state``; return what stands for this object from now on."""
        raise NotImplementedError


class Inert(Buildable):
    """Stand-in for an allowed plain-data class (e.g. ``argparse.Namespace``): holds attributes,
    runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            raise _refuse(f"{type(self).__name__} is given positional arguments")
        self.__dict__.update(_str_keys(kwargs, type(self).__name__))

    def build(self, state: Any) -> Any:
        if not isinstance(state, dict):
            raise _refuse(f"{type(self).__name__} is given a {type(state).__name__} as its state")
        self.__dict__.update(_str_keys(state, type(self).__name__))
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__!r})"


def _str_keys(d: Mapping, owner: str) -> dict[str, Any]:
    if not all(type(k) is str for k in d):
        raise _refuse(f"{owner} is given attributes whose names are not strings")
    return dict(d)


def inert_class(name: str) -> type:
    """A fresh attribute-holder class named ``name``, to stand in for a plain-data class."""
    return type(name, (Inert,), {})


# --- numpy: arrays, dtypes and scalars, as numpy 1 and 2 pickle them -------------------------

_NUMERIC_DTYPES = {
    np.dtype(c).str[1:]: np.dtype(c)
    for c in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1")
}


class _NDArrayClass:
    """What ``numpy.ndarray`` names in a pickle: only an argument of ``_reconstruct``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NDArrayClass()


def _plain_dtype(value: Any, what: str) -> np.dtype:
    if isinstance(value, _DType):
        value = value.dtype
    if not isinstance(value, np.dtype) or value.hasobject or value.str[1:] not in _NUMERIC_DTYPES:
        raise _refuse(f"{what} has dtype {brief(value)}; only numeric dtypes are read (no objects)")
    return value


class _DType(Buildable):
    """``numpy.dtype(spec, align, copy)`` followed by its ``BUILD``: a numeric dtype, or refused."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if type(spec) is not str or spec.lstrip("<>|=") not in _NUMERIC_DTYPES:
            raise _refuse(
                f"the pickle asks for numpy dtype {brief(spec)}; only numeric dtypes are read "
                "(no objects, no structured dtypes)"
            )
        self.dtype = _NUMERIC_DTYPES[spec.lstrip("<>|=")]

    def build(self, state: Any) -> np.dtype:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=")
            and state[2:5] == (None, None, None)
            and all(type(x) is int for x in state[5:8])
        ):
            raise _refuse(f"numpy dtype state {brief(state)} is not a plain numeric dtype")
        byteorder = state[1]
        return (
            self.dtype.newbyteorder(byteorder)
            if byteorder in "<>" and self.dtype.itemsize > 1
            else self.dtype
        )

    def __repr__(self) -> str:
        return f"dtype({self.dtype})"


def _shape(value: Any, limits: Limits, what: str) -> tuple[int, ...]:
    if not (
        isinstance(value, tuple)
        and len(value) <= limits.ndim
        and all(type(n) is int and 0 <= n < 1 << 62 for n in value)
    ):
        raise _refuse(f"{what} has shape {brief(value)}; expected up to {limits.ndim} non-negative integers")
    return value


class _Array(Buildable):
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` followed by its ``BUILD``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def build(self, state: Any) -> np.ndarray:
        # (version, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int):
            raise _refuse(f"numpy array state {brief(state)} is not a plain array")
        _, shape, dtype, fortran, raw = state
        shape = _shape(shape, self.limits, "a numpy array")
        dtype = _plain_dtype(dtype, "a numpy array")
        if not isinstance(raw, bytes) or type(fortran) is not bool:
            raise _refuse("a numpy array's data is not a bytes object")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != len(raw):
            raise _refuse(
                f"a numpy array of shape {shape} and dtype {dtype} needs "
                f"{count * dtype.itemsize} bytes, the file gives {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _scalar(dtype: Any, raw: Any) -> np.generic:
    dtype = _plain_dtype(dtype, "a numpy scalar")
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise _refuse("a numpy scalar's data does not match its dtype")
    return np.frombuffer(raw, dtype=dtype)[0]


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """How protocol 2 pickles ``bytes``: ``_codecs.encode(str, 'latin1')``."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise _refuse("the pickle calls _codecs.encode other than to spell bytes")
    return text.encode("latin1")


def _ordered_dict(*args: Any) -> OrderedDict:
    if args:
        raise _refuse("collections.OrderedDict is given arguments instead of items")
    return OrderedDict()


def numpy_globals(limits: Limits = LIMITS) -> dict[tuple[str, str], Any]:
    """The globals numpy's own pickles of arrays, dtypes and scalars name (numpy 1 and 2)."""
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DType}

    def reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
        if cls is not _NDARRAY:
            raise _refuse(f"numpy _reconstruct is asked for {brief(cls)}, not an ndarray")
        return _Array(limits)

    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = _scalar
    allowed[("_codecs", "encode")] = _codecs_encode
    allowed[("collections", "OrderedDict")] = _ordered_dict
    return allowed


NUMPY_ALLOWED: Mapping[tuple[str, str], Any] = numpy_globals()


# --- the machine ---------------------------------------------------------------------------

_CONTAINERS = (list, dict, set, tuple, frozenset, Buildable)
_MUTABLE = (list, dict, set, Buildable)
_REFUSED_OPCODES = {"INST", "OBJ", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"}


def load(
    file: IO[bytes],
    allowed: Mapping[tuple[str, str], Any],
    persistent_load: Callable[[Any], Any] | None = None,
    limits: Limits = LIMITS,
    end: int | None = None,
) -> Any:
    """The object of one pickle read from ``file`` (up to ``end``, default its end), as data.

    ``allowed`` maps ``(module, name)`` to the stand-in a global names; ``persistent_load``
    answers persistent ids (torch's storages). Raises :class:`UnsafePickleError` for anything
    outside the allowlist or the limits, :class:`CorruptPickle` for a malformed stream.
    """
    if end is None:
        here = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(here)
    return _Machine(allowed, persistent_load, limits).run(_BoundedReader(file, end, limits))


def loads(data: bytes, allowed: Mapping[tuple[str, str], Any], **kwargs: Any) -> Any:
    """:func:`load` from bytes."""
    return load(io.BytesIO(data), allowed, **kwargs)


class _Machine:
    def __init__(self, allowed, persistent_load, limits: Limits) -> None:
        self.allowed, self.persistent_load, self.limits = allowed, persistent_load, limits
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[Any, Any] = {}
        self.depth: dict[int, int] = {}  # id -> nesting depth, for containers
        self.placed: set[int] = set()  # ids of mutable objects already inside another
        self.built: set[int] = set()  # ids of OrderedDicts given their (dropped) state
        self.keep: list[Any] = []  # every container stays alive, so its id stays its own

    # stack helpers
    def pop(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise CorruptPickle("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise CorruptPickle("no MARK to pop to")
        at = self.marks.pop()
        items, self.stack[at:] = self.stack[at:], []
        return items

    def top(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise CorruptPickle("stack underflow")
        return self.stack[-1]

    def depth_of(self, items) -> int:
        return max((self.depth.get(id(x), 0) for x in items), default=0)

    def place(self, items) -> None:
        """``items`` go inside another object: from now on they cannot change."""
        for x in items:
            if isinstance(x, _MUTABLE):
                self.placed.add(id(x))

    def made(self, obj: Any, depth: int) -> Any:
        if depth > self.limits.depth:
            raise _refuse(f"the pickle nests deeper than {self.limits.depth} levels")
        if isinstance(obj, _CONTAINERS):
            self.depth[id(obj)] = depth
            self.keep.append(obj)
        return obj

    def new(self, obj: Any, items) -> Any:
        items = list(items)
        self.place(items)
        return self.made(obj, 1 + self.depth_of(items))

    def mutate(self, target: Any, kind: type, items: list[Any], opcode: str) -> None:
        if not isinstance(target, kind) or isinstance(target, Buildable):
            raise _refuse(f"{opcode} on a {type(target).__name__}, which plain data never does")
        if id(target) in self.placed:
            raise _refuse(f"{opcode} changes an object after it was used; plain data never does")
        self.place(items)
        self.made(target, max(self.depth.get(id(target), 1), 1 + self.depth_of(items)))

    def call(self, func: Any, args: Any, opcode: str) -> Any:
        if not isinstance(args, tuple):
            raise CorruptPickle(f"{opcode} arguments are not a tuple")
        if id(func) not in self._callables:
            raise _refuse(f"{opcode} calls {brief(func)}, which is not an allowed constructor")
        self.place(args)
        return self.made(func(*args), 1 + self.depth.get(id(args), 0))

    def resolve(self, obj: Any) -> Any:
        return getattr(obj, "value", obj) if isinstance(obj, Buildable) and obj.built else obj

    def run(self, reader: _BoundedReader) -> Any:
        self._callables = {id(v) for v in self.allowed.values() if callable(v)}
        count = 0
        try:
            for opcode, arg, _pos in pickletools.genops(reader):
                count += 1
                if count > self.limits.opcodes:
                    raise _refuse(f"the pickle has more than {self.limits.opcodes} opcodes")
                name = opcode.name
                if name == "STOP":
                    return self.resolve(self.pop())
                self.step(name, arg)
                if len(self.stack) > self.limits.stack:
                    raise _refuse(f"the pickle holds more than {self.limits.stack} items on its stack")
        except (
            ValueError,
            EOFError,
            IndexError,
            KeyError,
            TypeError,
            OverflowError,
            UnicodeDecodeError,
        ) as e:
            if isinstance(e, CorruptPickle):
                raise
            raise CorruptPickle(f"{type(e).__name__}: {e}") from None
        raise CorruptPickle("the pickle ends without STOP")

    def step(self, name: str, arg: Any) -> None:
        stack = self.stack
        if name in (
            "INT",
            "BININT",
            "BININT1",
            "BININT2",
            "LONG",
            "LONG1",
            "LONG4",
            "FLOAT",
            "BINFLOAT",
            "STRING",
            "BINSTRING",
            "SHORT_BINSTRING",
            "UNICODE",
            "BINUNICODE",
            "SHORT_BINUNICODE",
            "BINUNICODE8",
            "BINBYTES",
            "SHORT_BINBYTES",
            "BINBYTES8",
        ):
            stack.append(arg)
        elif name == "BYTEARRAY8":
            stack.append(bytes(arg))
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in ("PROTO", "FRAME"):
            pass
        elif name == "MARK":
            if len(self.marks) >= self.limits.depth:
                raise _refuse(f"the pickle nests deeper than {self.limits.depth} levels")
            self.marks.append(len(stack))
        elif name == "EMPTY_LIST":
            stack.append(self.made([], 1))
        elif name == "EMPTY_DICT":
            stack.append(self.made({}, 1))
        elif name == "EMPTY_SET":
            stack.append(self.made(set(), 1))
        elif name == "EMPTY_TUPLE":
            stack.append(self.made((), 1))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop() for _ in range(n)][::-1]
            stack.append(self.new(tuple(items), items))
        elif name in ("TUPLE", "LIST", "FROZENSET"):
            items = self.pop_mark()
            kind = {"TUPLE": tuple, "LIST": list, "FROZENSET": frozenset}[name]
            stack.append(self.new(kind(items), items))
        elif name == "DICT":
            items = self.pop_mark()
            if len(items) % 2:
                raise CorruptPickle("DICT with an odd number of items")
            stack.append(self.new(dict(zip(items[::2], items[1::2])), items))
        elif name == "APPEND":
            item = self.pop()
            self.mutate(self.top(), list, [item], name)
            self.top().append(item)
        elif name == "APPENDS":
            items = self.pop_mark()
            self.mutate(self.top(), list, items, name)
            self.top().extend(items)
        elif name == "SETITEM":
            value, key = self.pop(), self.pop()
            self.mutate(self.top(), dict, [key, value], name)
            self.top()[key] = value
        elif name == "SETITEMS":
            items = self.pop_mark()
            if len(items) % 2:
                raise CorruptPickle("SETITEMS with an odd number of items")
            self.mutate(self.top(), dict, items, name)
            self.top().update(zip(items[::2], items[1::2]))
        elif name == "ADDITEMS":
            items = self.pop_mark()
            self.mutate(self.top(), set, items, name)
            self.top().update(items)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[arg] = self.top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise CorruptPickle(f"memo entry {arg} is read before it is written")
            stack.append(self.resolve(self.memo[arg]))
        elif name == "DUP":
            stack.append(self.top())
        elif name == "POP":
            self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(self.find_global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = self.pop(), self.pop()
            if type(module) is not str or type(attr) is not str:
                raise CorruptPickle("STACK_GLOBAL of non-strings")
            stack.append(self.find_global(module, attr))
        elif name == "REDUCE" or name == "NEWOBJ":
            args = self.pop()
            stack.append(self.call(self.pop(), args, name))
        elif name == "NEWOBJ_EX":
            kwargs, args = self.pop(), self.pop()
            if kwargs != {}:
                raise _refuse("NEWOBJ_EX with keyword arguments, which plain data never uses")
            stack.append(self.call(self.pop(), args, name))
        elif name == "BUILD":
            state = self.pop()
            obj = self.top()
            if type(obj) is OrderedDict and id(obj) not in self.placed and id(obj) not in self.built:
                # torch's state dicts carry ``_metadata`` (module versions) as attributes: the
                # state of a fresh OrderedDict is checked to be plain data and then dropped
                if not isinstance(state, (dict, tuple)):
                    raise _refuse(f"BUILD of an OrderedDict with {brief(state)}")
                self.place([state])
                self.built.add(id(obj))
                return
            if not isinstance(obj, Buildable) or obj.built or id(obj) in self.placed:
                raise _refuse(f"BUILD on {brief(obj)}, which is not a fresh plain-data object")
            self.place([state])
            obj.value = obj.build(state)
            obj.built = True
            stack[-1] = self.made(obj.value, max(self.depth.get(id(obj), 1), 1 + self.depth_of([state])))
        elif name in ("PERSID", "BINPERSID"):
            pid = arg if name == "PERSID" else self.pop()
            if self.persistent_load is None:
                raise _refuse("the pickle refers to external objects (persistent ids)")
            self.place([pid])
            stack.append(self.made(self.persistent_load(pid), 1 + self.depth_of([pid])))
        elif name in _REFUSED_OPCODES:
            raise _refuse(f"the pickle uses opcode {name}, which plain data never does")
        else:
            raise CorruptPickle(f"unknown opcode {name}")

    def find_global(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _refuse(f"the pickle asks for {module}.{name}, which is not plain tensor data") from None
