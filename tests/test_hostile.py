"""Hostile and faulty input: refused in one line (exit 2), quickly, in bounded memory, with
nothing written and nothing carried over to the next file.

Every refusal runs in a fresh process under an address-space limit (:func:`run_bounded`), so a
blow-up fails the test instead of the machine; each asserts its time and peak RSS.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from converter.errors import CoatError, WeightsError
from converter.pipeline import convert_checkpoint
from converter.writers import atomic_write

from . import hostile as h
from .conftest import ROOT

LITE = "coat_lite_tiny"
SECONDS, RSS_MB = 5.0, 400  # every refusal: well under both (a healthy conversion is ~0.4 s, ~150 MB)


def refused(outcome: h.Outcome, *phrases: str) -> str:
    line = h.assert_one_line_refusal(outcome, *phrases)
    assert outcome.seconds < SECONDS, f"refusal took {outcome.seconds:.1f} s: {line}"
    assert outcome.peak_rss_mb < RSS_MB, f"refusal peaked at {outcome.peak_rss_mb:.0f} MB: {line}"
    return line


def nothing_but(folder: Path, *names: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def pth_with(tmp_path: Path, body: bytes, storages=None, name="bad.pth", legacy=False) -> Path:
    """A torch file (zip, or legacy) whose pickle is ``body``."""
    if legacy:
        return h.legacy_torch(tmp_path / name, h.pickle_of(body), storages or {})
    return h.torch_zip(tmp_path / name, h.pickle_of(body), storages)


def good_tensor_body(numel=4, **kw) -> bytes:
    return h.EMPTY_DICT + h.s("w") + h.tensor("0", numel, h.i(0), (h.i(numel),), (h.i(1),), **kw) + h.SETITEM


# --- 1. nesting ------------------------------------------------------------------------------

DEEP = 200_000


@pytest.mark.parametrize(
    "kind", ["pdparams-tuple-key", "pdparams-lists", "pth-zip", "pth-legacy", "pth-zip-dict-values"]
)
def test_deep_nesting_is_refused_not_a_crash(tmp_path, kind):
    if kind.startswith("pdparams"):
        data = h.deep_tuple_key(DEEP) if kind == "pdparams-tuple-key" else h.deep_lists(DEEP)
        src = write(tmp_path, "deep.pdparams", data)
        outcome = h.convert_bounded(src, tmp_path / "o.safetensors", "--to", "torch")
    elif kind == "pth-zip-dict-values":
        depth = 20_000  # its 40,000 items stay under the stack limit: the depth refuses it
        body = (h.EMPTY_DICT + h.s("k")) * depth + h.EMPTY_DICT + h.SETITEM * depth
        src = pth_with(tmp_path, body)
        outcome = h.convert_bounded(src, tmp_path / "o.pdparams")
    else:
        body = h.EMPTY_DICT + h.EMPTY_TUPLE + h.TUPLE1 * DEEP + h.i(1) + h.SETITEM
        src = pth_with(tmp_path, body, legacy=kind == "pth-legacy")
        outcome = h.convert_bounded(src, tmp_path / "o.pdparams")
    refused(outcome, "nests deeper than 100 levels", "nothing in the file was executed")
    nothing_but(tmp_path, src.name)


# --- 2. memory from tiny files ---------------------------------------------------------------


def _pdparams_cases():
    f4 = h.numpy_array
    return {
        "object dtype, 5e8 slots": (h.object_array_pdparams(500_000_000), "only numeric dtypes"),
        "object dtype via structured dtype": (
            h.state_dict_pickle({"w": f4((2,), "V16", b"")}),
            "only numeric dtypes",
        ),
        "shape far beyond the bytes": (
            h.state_dict_pickle({"w": f4((1 << 40,), "f4", b"")}),
            "needs 4398046511104 bytes, the file gives 0",
        ),
        "shape overflowing int64": (
            h.state_dict_pickle({"w": f4((1 << 61, 1 << 61), "f4", b"")}),
            "bytes, the file gives 0",
        ),
        "_reconstruct asked for a huge array": (
            h.state_dict_pickle({"w": f4((1,), "f4", b"\0" * 4, reconstruct_shape=(1 << 40,))}),
            None,
        ),
        "bytes declared past the end": (h.PROTO4 + b"\x8e" + struct.pack("<Q", 1 << 60), "corrupt"),
        "a million opcodes": (h.many_opcodes(1_000_000), "more than 250000 opcodes"),
        "numpy scalar of the wrong size": (
            h.state_dict_pickle(
                {
                    "w": h.g("numpy.core.multiarray", "scalar")
                    + h.tup(h.numpy_dtype("f8"), h.binbytes(b"1"))
                    + h.REDUCE
                }
            ),
            "scalar",
        ),
    }


def test_a_stack_of_items_never_used_is_bounded(tmp_path):
    src = write(tmp_path, "w.pdparams", h.pickle_of(h.NONE * 300_000))
    refused(
        h.convert_bounded(src, tmp_path / "o.safetensors", "--to", "torch"),
        "more than 100000 items on its stack",
    )


@pytest.mark.parametrize("case", list(_pdparams_cases()))
def test_tiny_pdparams_cannot_ask_for_memory(tmp_path, case):
    data, phrase = _pdparams_cases()[case]
    src = write(tmp_path, "w.pdparams", data)
    line = refused(
        h.convert_bounded(src, tmp_path / "o.safetensors", "--to", "torch"), *([phrase] if phrase else [])
    )
    assert "w.pdparams" in line
    nothing_but(tmp_path, src.name)


def test_reconstruct_asked_for_a_huge_array_still_reads_the_real_one(tmp_path):
    """``_reconstruct``'s shape is numpy's placeholder: it is never allocated; the state decides."""
    from converter.paddle_weights import read_pdparams

    src = write(
        tmp_path,
        "w.pdparams",
        h.state_dict_pickle(
            {"w": h.numpy_array((2,), "f4", np.float32([1, 2]).tobytes(), reconstruct_shape=(1 << 40,))}
        ),
    )
    np.testing.assert_array_equal(read_pdparams(src)["w"], [1, 2])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_object_array_in_an_optimizer_entry_is_refused(checkpoints, tmp_path, legacy):
    body = (
        h.EMPTY_DICT
        + h.s("model")
        + good_tensor_body()
        + h.SETITEM
        + h.s("optimizer")
        + h.numpy_array((50_000_000,), "O8", b"")
        + h.SETITEM
    )
    src = pth_with(tmp_path, body, {"0": b"\0" * 16}, legacy=legacy)
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"), "only numeric dtypes")
    nothing_but(tmp_path, src.name)


@pytest.mark.parametrize("case", ["numel beyond member", "zero-stride giant", "past the storage"])
def test_tensor_bigger_than_its_storage(tmp_path, case):
    body = {
        "numel beyond member": good_tensor_body(numel=1 << 45),
        "zero-stride giant": h.EMPTY_DICT
        + h.s("w")
        + h.tensor("0", 4, h.i(0), (h.i(1 << 31), h.i(1 << 31)), (h.i(0), h.i(0)))
        + h.SETITEM,
        "past the storage": h.EMPTY_DICT
        + h.s("w")
        + h.tensor("0", 4, h.i(2), (h.i(4),), (h.i(1),))
        + h.SETITEM,
    }[case]
    src = pth_with(tmp_path, body, {"0": b"\0" * 16})
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"))
    nothing_but(tmp_path, src.name)


# --- 3. zip bombs ----------------------------------------------------------------------------


def test_deflated_storage_is_refused_unread(tmp_path):
    """A storage member inflating to 512 MiB from a file of 0.5 MB (torch never compresses)."""
    import zipfile

    src = tmp_path / "bomb.pth"
    numel = 128 << 20
    h.torch_zip(src, h.pickle_of(good_tensor_body(numel=numel)))
    info = zipfile.ZipInfo("archive/data/0")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(src, "a", compresslevel=1) as z:
        with z.open(info, "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(512):
                member.write(block)
    assert src.stat().st_size < 4 << 20
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"), "compressed", "torch.save never compresses")
    nothing_but(tmp_path, src.name)


def test_deflated_data_pkl_is_refused(tmp_path):
    src = h.torch_zip(
        tmp_path / "bomb.pth", h.pickle_of(good_tensor_body()), {"0": bytes(16)}, compress={"data.pkl"}
    )
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"), "data.pkl", "compressed")


def test_archive_of_a_million_members_is_refused_before_reading_them(tmp_path):
    """The central directory is sized from the end record before zipfile parses it."""
    src = tmp_path / "many.pth"
    entries = 1_000_000
    record = b"PK\x05\x06" + struct.pack("<4H2LH", 0, 0, 0xFFFF, 0xFFFF, 46 * entries, 0, 0)
    zip64_end = b"PK\x06\x06" + struct.pack("<Q2H2L4Q", 44, 45, 45, 0, 0, entries, entries, 46 * entries, 0)
    locator = b"PK\x06\x07" + struct.pack("<LQL", 0, 4, 1)
    src.write_bytes(b"PK\x03\x04" + zip64_end + locator + record)
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"), "1000000 members", "refused unread")


def test_member_declared_past_the_end_of_the_file(checkpoints, tmp_path):
    data = bytearray(checkpoints(LITE).read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # the last member's central-directory entry
    data[cd + 24 : cd + 28] = struct.pack("<L", 0x7FFFFFF0)  # its uncompressed size
    data[cd + 20 : cd + 24] = struct.pack("<L", 0x7FFFFFF0)  # and its compressed size
    src = write(tmp_path, "cut.pth", bytes(data))
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"))


# --- 4. nothing carried over -----------------------------------------------------------------


def _state_attacks() -> dict[str, bytes]:
    return {
        "BUILD on a storage type": h.g("torch", "FloatStorage")
        + h.EMPTY_DICT
        + h.s("_name")
        + h.s("HalfStorage")
        + h.SETITEM
        + h.BUILD,
        "BUILD on Namespace": h.g("argparse", "Namespace")
        + h.EMPTY_DICT
        + h.s("x")
        + h.i(1)
        + h.SETITEM
        + h.BUILD,
        "BUILD on OrderedDict": h.g("collections", "OrderedDict") + h.EMPTY_DICT + h.BUILD,
        "SETITEM into the ndarray marker": h.g("numpy", "ndarray") + h.s("k") + h.i(1) + h.SETITEM,
        "mutating numpy's float32 dtype": h.numpy_dtype("f4", ">") + h.EMPTY_DICT + h.BUILD,
        "dtype BUILD to big-endian then a tensor": h.EMPTY_DICT
        + h.s("d")
        + h.numpy_dtype("f4", ">")
        + h.SETITEM
        + h.s("w")
        + h.tensor("0", 4, h.i(0), (h.i(4),), (h.i(1),), kind="HalfStorage")
        + h.SETITEM,
        "BUILD twice on one array": h.numpy_array((1,), "f4", bytes(4))
        + h.tup(h.i(1), h.tup(h.i(1)), h.numpy_dtype("f2"), h.FALSE, h.binbytes(bytes(2)))
        + h.BUILD,
    }


def test_hostile_files_change_nothing_for_the_next_file(checkpoints, tmp_path):
    """Each attack is refused or harmless, and a genuine checkpoint converted after all of them,
    in the same process, is bit-identical to one converted in a fresh one."""
    good = checkpoints(LITE)
    reference = tmp_path / "reference.pdparams"
    assert (
        subprocess.run(
            [sys.executable, str(ROOT / "convert.py"), good, reference], capture_output=True
        ).returncode
        == 0
    )
    for n, (name, body) in enumerate(_state_attacks().items()):
        for legacy in (False, True):
            src = pth_with(
                tmp_path, body, {"0": bytes(16)}, name=f"attack{n}{'l' if legacy else ''}.pth", legacy=legacy
            )
            with pytest.raises(CoatError):
                convert_checkpoint(src, tmp_path / "attack.pdparams", force=True)
        assert not (tmp_path / "attack.pdparams").exists(), name
        out = tmp_path / f"after{n}.pdparams"
        convert_checkpoint(good, out)
        assert out.read_bytes() == reference.read_bytes(), f"{name} changed the next conversion"


def test_release_over_a_folder_with_a_hostile_file_releases_the_good_one(checkpoints, tmp_path):
    from converter.paddle_weights import read_weights

    folder = tmp_path / "src"
    folder.mkdir()
    pth_with(folder, _state_attacks()["BUILD on a storage type"], name="a_hostile.pth")
    (folder / "b_good.pth").write_bytes(checkpoints(LITE).read_bytes())
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "reference.release", folder, out, "--allow-unofficial"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert "a_hostile.pth" in result.stdout and "refused" in result.stdout, result.stdout
    reference = tmp_path / "reference.pdparams"
    convert_checkpoint(checkpoints(LITE), reference)
    released = read_weights(out / LITE / f"{LITE}.pdparams")
    expected = read_weights(reference)
    assert released.keys() == expected.keys()
    assert all(np.array_equal(released[k], expected[k]) for k in expected)


# --- 5. header fields of wrong type or range -------------------------------------------------


def _safetensors(header: dict | str, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _entry(**kw):
    return {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], **kw}}


SAFETENSORS_CASES = {
    "float offsets": _entry(data_offsets=[0.5, 4]),
    "string offsets": _entry(data_offsets=["0", "4"]),
    "float shape": _entry(shape=[1.0]),
    "bool shape": _entry(shape=[True]),
    "Infinity shape": '{"w": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}',
    "2**64 shape": _entry(shape=[2**64]),
    "int64-overflowing shape": _entry(shape=[2**32, 2**32, 4], data_offsets=[0, 0]),
    "negative shape": _entry(shape=[-1]),
    "deeply nested metadata": '{"__metadata__": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "deeply nested entry": '{"w": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "unknown dtype": _entry(dtype="F8_E4M3", data_offsets=[0, 1]),
    "object dtype": _entry(dtype="O"),
    "offsets past the data": _entry(data_offsets=[0, 1 << 40]),
    "header length past the file": None,
}


@pytest.mark.parametrize("case", list(SAFETENSORS_CASES))
@pytest.mark.parametrize("role", ["source", "weights"])
def test_safetensors_header_fields_are_validated(tmp_path, case, role):
    header = SAFETENSORS_CASES[case]
    data = _safetensors("{}", length=1 << 40) if header is None else _safetensors(header, bytes(4))
    src = write(tmp_path, "w.safetensors", data)
    flags = ("--to", "torch") if role == "weights" else ()
    dst = tmp_path / ("o.pth" if role == "weights" else "o.pdparams")
    refused(h.convert_bounded(src, dst, *flags), "not a valid .safetensors file")
    nothing_but(tmp_path, src.name)


@pytest.mark.parametrize(
    "offset, size, stride",
    [
        (h.f(0.5), (h.i(4),), (h.i(1),)),
        (h.i(-1), (h.i(4),), (h.i(1),)),
        (h.TRUE, (h.i(4),), (h.i(1),)),
        (h.i(1 << 70), (h.i(4),), (h.i(1),)),
        (h.i(0), (h.f(4.0),), (h.i(1),)),
        (h.i(0), (h.i(4),), (h.s("1"),)),
        (h.i(0), (h.i(2), h.i(2)), (h.i(1),)),
        (h.i(0), (h.i(-4),), (h.i(1),)),
    ],
    ids=[
        "offset 0.5",
        "offset -1",
        "offset True",
        "offset 2**70",
        "float size",
        "string stride",
        "rank mismatch",
        "negative size",
    ],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_tensor_geometry_is_validated(tmp_path, offset, size, stride, legacy):
    body = h.EMPTY_DICT + h.s("w") + h.tensor("0", 4, offset, size, stride) + h.SETITEM
    src = pth_with(tmp_path, body, {"0": bytes(16)}, legacy=legacy)
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"), "tensor geometry")


HOSTILE_WEIGHTS = {
    "deep.pdparams": h.deep_tuple_key(DEEP),
    "object.pdparams": h.object_array_pdparams(500_000_000),
    "opcodes.pdparams": h.many_opcodes(1_000_000),
    "code.pdparams": h.pickle_of(h.g("os", "system") + h.tup(h.s("true")) + h.REDUCE),
    "float-offsets.safetensors": _safetensors(_entry(data_offsets=[0.5, 4]), bytes(4)),
    "overflow.safetensors": _safetensors(_entry(shape=[2**32, 2**32, 4], data_offsets=[0, 0])),
    "nested.safetensors": _safetensors('{"__metadata__": ' + "[" * 100_000 + "]" * 100_000 + "}"),
}


def test_create_model_raises_weights_error_for_every_hostile_file(tmp_path):
    """In a bounded child: ``create_model(pretrained=...)`` raises WeightsError, nothing else."""
    for name, data in HOSTILE_WEIGHTS.items():
        write(tmp_path, name, data)
    code = (
        "import sys, paddle_model\n"
        "from converter.errors import WeightsError\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        paddle_model.create_model('coat_lite_tiny', pretrained=path)\n"
        "    except WeightsError as e:\n"
        "        print('refused', path, str(e).count(chr(10)))\n"
    )
    outcome = h.run_bounded("-c", code, *sorted(tmp_path.iterdir()), limit=8 << 30)
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    lines = outcome.stdout.splitlines()
    assert len(lines) == len(HOSTILE_WEIGHTS) and all(ln.endswith(" 0") for ln in lines), outcome.stdout
    assert outcome.seconds < 30


def test_hostile_weights_raise_weights_error_in_process(tmp_path):
    from converter.paddle_weights import read_weights

    for name, data in HOSTILE_WEIGHTS.items():
        with pytest.raises(WeightsError, match=name):
            read_weights(write(tmp_path, name, data))


# --- 6. file-system faults -------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs: the checkpoint (23 MB) cannot fit. Needs root, as CI and these machines run."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"cannot mount a tmpfs for the disk-full test: {done.stderr.strip()}"
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("suffix", [".pdparams", ".safetensors"])
def test_disk_full_is_one_line_and_leaves_nothing(checkpoints, small_tmpfs, suffix):
    outcome = h.convert_bounded(checkpoints(LITE), small_tmpfs / f"o{suffix}")
    line = h.assert_one_line_refusal(outcome, "No space left on device", "ENOSPC", f"o{suffix}")
    assert outcome.seconds < 10, line
    nothing_but(small_tmpfs)
    df = subprocess.run(["df", "--output=used", str(small_tmpfs)], capture_output=True, text=True)
    assert df.stdout.split()[-1] == "0", df.stdout  # no unnamed file holds the space either


def test_read_only_destination_is_one_line(checkpoints, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    outcome = h.convert_bounded(checkpoints(LITE), small_tmpfs / "o.pdparams")
    h.assert_one_line_refusal(outcome, "Read-only file system", "EROFS", "o.pdparams")
    nothing_but(small_tmpfs)


def test_unwritable_folder_is_one_line(checkpoints):
    """EACCES as an unprivileged user meets it: the tests run as root, so the child imports
    everything, then drops to nobody (in a folder of its own, as pytest's are private)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="coat-eacces-"))
    try:
        os.chmod(root, 0o755)
        folder = root / "locked"
        folder.mkdir(mode=0o555)
        src = root / "src.pth"
        src.write_bytes(checkpoints(LITE).read_bytes())
        os.chmod(src, 0o644)

        code = (
            "import os, sys; sys.path.insert(0, sys.argv[1]); import convert, converter.pipeline; "
            "from converter.cli import version; version(); "
            "os.setgid(65534); os.setuid(65534); sys.exit(convert.main(sys.argv[2:]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, ROOT, src, folder / "o.pdparams"],
            capture_output=True,
            text=True,
            cwd=root,
        )
        outcome = h.Outcome(done.returncode, done.stdout, done.stderr, 0.0, 0.0)
        h.assert_one_line_refusal(outcome, "Permission denied", "EACCES", "o.pdparams")
        nothing_but(folder)
    finally:
        shutil.rmtree(root)


# --- 7. concurrent writers -------------------------------------------------------------------


def test_a_writer_that_finishes_second_does_not_clobber(tmp_path):
    """Both pass the early existence check; the one that names its file second is refused."""
    dst = tmp_path / "o.pdparams"
    started, release = threading.Event(), threading.Event()
    errors = []

    def slow(f):
        f.write(b"slow")
        started.set()
        release.wait(10)

    def run_slow():
        try:
            atomic_write(dst, slow)
        except CoatError as e:
            errors.append(str(e))

    thread = threading.Thread(target=run_slow)
    thread.start()
    started.wait(10)
    atomic_write(dst, lambda f: f.write(b"fast"))
    release.set()
    thread.join()
    assert dst.read_bytes() == b"fast"
    assert len(errors) == 1 and "already exists; pass --force" in errors[0]
    nothing_but(tmp_path, "o.pdparams")


def test_two_convert_processes_exactly_one_wins(checkpoints, tmp_path):
    src, dst = checkpoints(LITE), tmp_path / "o.safetensors"
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "convert.py"), str(src), str(dst)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "already exists; pass --force" in loser and len(loser.strip().splitlines()) == 1
    nothing_but(tmp_path, "o.safetensors")


def test_force_replaces_atomically(tmp_path):
    dst = tmp_path / "o.json"
    dst.write_bytes(b"old")
    atomic_write(dst, lambda f: f.write(b"new"), force=True)
    assert dst.read_bytes() == b"new"
    nothing_but(tmp_path, "o.json")


# --- 8. signals ------------------------------------------------------------------------------

_SLOW_WRITER = """
import runpy, sys, time
import converter.writers as w
if sys.argv[1] == "named":
    w._open_unnamed = lambda folder: None  # the fallback for file systems without O_TMPFILE
real = w.safetensors_io.serialize
def slow(*args, **kwargs):
    for n, chunk in enumerate(real(*args, **kwargs)):
        if n == 3:
            print("writing", flush=True)
            time.sleep(60)
        yield chunk
w.safetensors_io.serialize = slow
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(
    "mode, sig, code, word",
    [
        ("unnamed", signal.SIGTERM, 143, "terminated"),
        ("unnamed", signal.SIGINT, 130, "interrupted"),
        ("unnamed", signal.SIGKILL, -9, None),
        # the fallback where O_TMPFILE is missing: cleaned on SIGTERM/SIGINT (not after SIGKILL)
        ("named", signal.SIGTERM, 143, "terminated"),
        ("named", signal.SIGINT, 130, "interrupted"),
    ],
)
def test_signal_mid_write_leaves_nothing(checkpoints, tmp_path, mode, sig, code, word):
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "o.safetensors"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SLOW_WRITER,
            mode,
            str(ROOT / "convert.py"),
            str(checkpoints(LITE)),
            str(dst),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout.readline() == "writing\n", proc.stderr.read()
    if mode == "named":
        assert len(list(out.iterdir())) == 1  # the temporary file exists while writing
    start = time.perf_counter()
    proc.send_signal(sig)
    assert proc.wait(30) == code
    assert time.perf_counter() - start < 5
    err = proc.stderr.read()
    if word:
        assert err.strip() == f"error: {word}", err
    nothing_but(out)
    rerun = subprocess.run(
        [sys.executable, str(ROOT / "convert.py"), checkpoints(LITE), dst], capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    nothing_but(out, "o.safetensors")


# --- 10. --json validates before it hashes ---------------------------------------------------


def test_json_refuses_a_huge_invalid_file_at_once(tmp_path):
    src = tmp_path / "huge.pth"
    with open(src, "wb") as f:
        f.write(b"PK\x03\x04")
        f.truncate(16 << 30)  # sparse: 16 GiB that hashing would take many seconds to read
    outcome = h.convert_bounded(src, tmp_path / "o.pdparams", "--json")
    refused(outcome, "huge.pth")
    assert outcome.seconds < 3


# --- 11. small ones --------------------------------------------------------------------------


def test_newline_in_a_file_name_stays_one_line(tmp_path):
    src = write(tmp_path, "two\nlines.pth", b"not a checkpoint")
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"), "two lines.pth")


@pytest.mark.parametrize("suffix", [".pdparams", ".safetensors"])
def test_paddle_weights_as_source_without_to_torch_get_the_right_hint(checkpoints, tmp_path, suffix):
    weights = tmp_path / f"w{suffix}"
    convert_checkpoint(checkpoints(LITE), weights)
    refused(h.convert_bounded(weights, tmp_path / "o.safetensors"), "Paddle weights", "pass --to torch")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_device_as_source_is_refused_not_waited_on(tmp_path, kind):
    if kind == "fifo":
        src = tmp_path / "pipe.pth"
        os.mkfifo(src)
    else:
        src = Path("/dev/zero")
    refused(h.convert_bounded(src, tmp_path / "o.pdparams"), "not a regular file")
