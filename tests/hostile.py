"""Hand-made hostile files, opcode by opcode, and a way to run a refusal in a bounded child.

Each builder writes a small file that attacks one limit of the readers (nesting, memory,
zip members, shared state, header fields); :func:`run_bounded` runs a command on it in a fresh
process under an address-space limit and reports its exit code, stderr, time and peak RSS.
:func:`mutations` makes the fuzz tests' flipped and truncated copies of a good file.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import CoatError
from converter.pipeline import convert_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 2 << 30  # a blow-up hits this and fails the test, not the machine


def mutations(data: bytes, places: Sequence[int], count: int, seed: int) -> Iterator[tuple[int, bytes]]:
    """``count`` numbered copies of ``data``: every third truncated anywhere, the others with one
    to three bits flipped at positions drawn from ``places`` (``range(len(data))``: anywhere)."""
    rng = np.random.default_rng(seed)
    for n in range(count):
        mutated = bytearray(data)
        if n % 3 == 2:
            yield n, bytes(mutated[: int(rng.integers(0, len(data)))])
            continue
        for _ in range(int(rng.integers(1, 4))):
            mutated[places[int(rng.integers(0, len(places)))]] ^= 1 << int(rng.integers(0, 8))
        yield n, bytes(mutated)


def convert_each(cases: Iterator[tuple[int, bytes]], src: Path, dst: Path, expected: bytes) -> int:
    """Write each numbered case to ``src`` and convert it to ``dst``: it must be refused with a
    CoatError and leave no ``dst``, or give exactly the bytes ``expected``. Returns how many
    were refused."""
    refused = 0
    for n, data in cases:
        src.write_bytes(data)
        try:
            convert_checkpoint(src, dst, force=True)
        except CoatError:
            refused += 1
            assert not dst.exists(), f"case {n} was refused but left {dst}"
            continue
        assert dst.read_bytes() == expected, f"case {n} converted to different weights"
        dst.unlink()
    return refused


# --- pickle opcodes --------------------------------------------------------------------------
PROTO4, STOP, MARK = b"\x80\x04", b".", b"("
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE = b"}", b"]", b")"
TUPLE, TUPLE1, TUPLE2, TUPLE3, LIST = b"t", b"\x85", b"\x86", b"\x87", b"l"
SETITEM, SETITEMS, APPEND, APPENDS = b"s", b"u", b"a", b"e"
NONE, TRUE, FALSE, REDUCE, BUILD, BINPERSID = b"N", b"\x88", b"\x89", b"R", b"b", b"Q"


def s(text: str) -> bytes:
    """SHORT_BINUNICODE (or BINUNICODE for long text)."""
    data = text.encode()
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + struct.pack("<I", len(data)) + data


def i(n: int) -> bytes:
    """An integer opcode: BININT for 32-bit values, LONG1 otherwise."""
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def f(x: float) -> bytes:
    return b"G" + struct.pack(">d", x)


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def binbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def pickle_of(body: bytes) -> bytes:
    return PROTO4 + body + STOP


def deep_tuple_key(depth: int) -> bytes:
    """``{((((...)))): 1}``: hashing the key recursed in C until the interpreter crashed."""
    return pickle_of(EMPTY_DICT + EMPTY_TUPLE + TUPLE1 * depth + i(1) + SETITEM)


def deep_lists(depth: int) -> bytes:
    return pickle_of(MARK * depth + LIST * depth)


def many_opcodes(n: int) -> bytes:
    """A list of ``n // 2`` Nones, one ``APPEND`` each: memory follows the opcode count."""
    return pickle_of(EMPTY_LIST + (NONE + APPEND) * (n // 2))


def numpy_array(shape: tuple[int, ...], dtype: str, raw: bytes, reconstruct_shape=(0,)) -> bytes:
    """A numpy array as numpy pickles it: ``_reconstruct(ndarray, (0,), b'b')`` then BUILD."""
    return (
        g("numpy.core.multiarray", "_reconstruct")
        + g("numpy", "ndarray")
        + tup(*(i(n) for n in reconstruct_shape))
        + binbytes(b"b")
        + TUPLE3
        + REDUCE
        + tup(i(1), tup(*(i(n) for n in shape)), numpy_dtype(dtype), FALSE, binbytes(raw))
        + BUILD
    )


def numpy_dtype(spec: str, byteorder: str = "<") -> bytes:
    return (
        g("numpy", "dtype")
        + s(spec)
        + FALSE
        + TRUE
        + TUPLE3
        + REDUCE
        + tup(i(3), s(byteorder), NONE, NONE, NONE, i(-1), i(-1), i(0))
        + BUILD
    )


def object_array_pdparams(n: int) -> bytes:
    """An object array of ``n`` slots from a file of about 100 bytes (``numpy`` allocated it)."""
    return pickle_of(EMPTY_DICT + s("w") + numpy_array((n,), "O8", b"") + SETITEM)


def state_dict_pickle(entries: dict[str, bytes]) -> bytes:
    return pickle_of(EMPTY_DICT + MARK + b"".join(s(k) + v for k, v in entries.items()) + SETITEMS)


# --- torch files -----------------------------------------------------------------------------


def storage_pid(key: str, numel: int, kind: str = "FloatStorage") -> bytes:
    return tup(s("storage"), g("torch", kind), s(key), s("cpu"), i(numel)) + BINPERSID


def tensor(
    key: str, numel: int, offset: bytes, size: tuple, stride: tuple, kind: str = "FloatStorage"
) -> bytes:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    return (
        g("torch._utils", "_rebuild_tensor_v2")
        + tup(
            storage_pid(key, numel, kind),
            offset,
            tup(*size),
            tup(*stride),
            FALSE,
            g("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE,
        )
        + REDUCE
    )


def torch_zip(
    path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None, compress: set[str] = frozenset()
) -> Path:
    """A ``torch.save``-like archive; members named in ``compress`` are deflated."""
    with zipfile.ZipFile(path, "w") as z:

        def add(name: str, data: bytes) -> None:
            method = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            z.writestr(zipfile.ZipInfo(f"archive/{name}"), data, compress_type=method)

        add("data.pkl", data_pkl)
        add("byteorder", b"little")
        for key, data in (storages or {}).items():
            add(f"data/{key}", data)
        add("version", b"3\n")
    return path


def legacy_torch(path: Path, main_pickle: bytes, storages: dict[str, bytes], numels=None) -> Path:
    """A legacy ``torch.save`` file: magic, protocol, sys_info, ``main_pickle``, keys, storages.

    The storage ids of :func:`storage_pid` get the legacy format's sixth field (no view)."""
    main_pickle = main_pickle.replace(TUPLE + BINPERSID, NONE + TUPLE + BINPERSID)
    info = pickle_of(
        EMPTY_DICT + s("protocol_version") + i(1001) + SETITEM + s("little_endian") + TRUE + SETITEM
    )
    keys = pickle_of(EMPTY_LIST + MARK + b"".join(s(k) for k in storages) + APPENDS)
    out = io.BytesIO()
    out.write(pickle_of(i(0x1950A86A20F9469CFC6C)) + pickle_of(i(1001)) + info + main_pickle + keys)
    for key, data in storages.items():
        numel = (numels or {}).get(key, len(data) // 4)
        out.write(struct.pack("<q", numel) + data)
    path.write_bytes(out.getvalue())
    return path


# --- running ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float


_BOUNDED = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
report, sys.argv = sys.argv[1], sys.argv[2:]
try:
    if sys.argv[0] == "-c":
        code = sys.argv.pop(1)
        exec(compile(code, "<test>", "exec"), {{"__name__": "__main__"}})
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
finally:  # VmHWM: this process's own peak (ru_maxrss would start from the forking parent's)
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(report, "w") as f:
        f.write(peak)
"""


def run_bounded(
    *args: str | Path, limit: int = ADDRESS_SPACE, timeout: float = 120, env: dict | None = None
) -> Outcome:
    """Run ``python ARGS`` (a script path or ``-c CODE``) in a fresh process whose address space
    is capped at ``limit``; its exit code, output, wall time and peak RSS (its VmHWM)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rss"
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-c", _BOUNDED.format(limit=limit), report, *map(str, args)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=timeout,
                env={**os.environ, **(env or {})},
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"still running after {timeout} s: {e.stderr!r:.2000}") from None
        seconds = time.perf_counter() - start
        rss = int(report.read_text()) / 1024 if report.exists() else float("nan")
    return Outcome(done.returncode, done.stdout, done.stderr, seconds, rss)


def convert_bounded(src: Path, dst: Path, *flags: str, **kwargs) -> Outcome:
    return run_bounded(ROOT / "convert.py", src, dst, *flags, **kwargs)


def assert_one_line_refusal(outcome: Outcome, *phrases: str, code: int = 2) -> str:
    assert outcome.returncode == code, (outcome.returncode, outcome.stderr[-3000:])
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr[-3000:]
    assert lines[0].startswith("error: ") and "Traceback" not in outcome.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]
