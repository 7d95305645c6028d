"""Hostile-input soak: thousands of mutated files per format, and the refusal of each class.

    python benchmarks/soak_hostile.py --count 1000      # mutations per format
    python benchmarks/soak_hostile.py --classes          # one table row per class of attack
    python benchmarks/soak_hostile.py --network          # hostile servers and planted cache entries
    python benchmarks/soak_hostile.py --kernel-inputs    # odd input shapes, both kernels modes

The soak mutates a seeded coat_lite_tiny checkpoint in four formats (zip ``.pth``, legacy
``.pth`` and ``.safetensors`` sources, ``.pdparams`` weights) with bit flips anywhere, byte
runs overwritten, truncations and insertions. Each format runs in its own child under an
address-space limit, each case under an alarm: it counts refusals (the typed error), files
read exactly, tracebacks (any other exception), hangs (over 20 s) and crashes (the child
died), and reports the child's peak RSS. ``--classes`` runs ``convert.py`` once per class of
the hostile-input tests in a fresh bounded process: exit code, time, peak RSS.

``--network`` runs each hostile server of ``tests/test_hostile_network.py`` (and each planted
cache entry) against ``paddle_model.hub.fetch`` in a fresh process: outcome, time, peak RSS and
what it left in the cache. ``--kernel-inputs`` feeds coat_lite_tiny and coat_tiny inputs of
0x0, 16x16, 31x31, 64x16, one channel and five dimensions, with the compiled ops and without
(``COAT_PADDLE_KERNELS``): a typed refusal or a result is an outcome, a raw exception a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMATS = ("zip-pth", "legacy-pth", "safetensors", "pdparams")
LIMIT = 3 << 30

_CHILD = r"""
import json, resource, signal, sys, traceback
import numpy as np
fmt, src, count, seed, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from pathlib import Path
from converter.errors import CoatError
from converter.pipeline import convert_checkpoint
src = Path(src)
work = src.parent / ("case" + src.suffix)
out = src.parent / "out.pdparams"
if fmt == "pdparams":
    import paddle_model
    from converter.paddle_weights import read_weights
    from paddle_model.weights import load_state_dict
    model = paddle_model.create_model("coat_lite_tiny")
    def attempt():
        load_state_dict(model, read_weights(work), source=str(work))
        return None
else:
    convert_checkpoint(src, out, force=True)
    expected = out.read_bytes()
    out.unlink()
    def attempt():
        convert_checkpoint(work, out, force=True)
        same = out.read_bytes() == expected
        out.unlink()
        return same
class Hang(Exception):
    pass
def alarm(*_):
    raise Hang
signal.signal(signal.SIGALRM, alarm)
data = src.read_bytes()
rng = np.random.default_rng(seed)
counts = dict(refused=0, identical=0, different=0, loaded=0, tracebacks=0, hangs=0)
examples = []
for n in range(count):
    m = bytearray(data)
    kind = n % 4
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            m[int(rng.integers(0, len(m)))] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:
        at = int(rng.integers(0, len(m)))
        m[at:at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    elif kind == 2:
        m = m[: int(rng.integers(0, len(m)))]
    else:
        at = int(rng.integers(0, len(m)))
        m[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    work.write_bytes(bytes(m))
    signal.alarm(20)
    try:
        same = attempt()
        if same is None:
            counts["loaded"] += 1
        else:
            counts["identical" if same else "different"] += 1
    except CoatError as e:
        counts["refused"] += 1
        if "\n" in str(e):
            counts["tracebacks"] += 1
            examples.append((n, "multi-line message"))
    except Hang:
        counts["hangs"] += 1
        examples.append((n, "hang"))
    except BaseException as e:
        counts["tracebacks"] += 1
        examples.append((n, "".join(traceback.format_exception_only(type(e), e)).strip()[:300]))
    finally:
        signal.alarm(0)
    if out.exists():
        out.unlink()
    with open(report, "w") as f:
        json.dump(dict(done=n + 1, counts=counts, examples=examples[:10]), f)
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(report, "w") as f:
    json.dump(dict(done=count, counts=counts, examples=examples[:10], peak_rss_mb=peak / 1024), f)
"""


def _sources(folder: Path) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_model

    from converter.pipeline import convert_checkpoint
    from reference.checkpoints import official_state_dict, seeded_model

    model = seeded_model("coat_lite_tiny", seed=0)
    paths = {
        f: folder / f / name
        for f, name in zip(FORMATS, ("src.pth", "src.pth", "src.safetensors", "src.pdparams"))
    }
    for path in paths.values():
        path.parent.mkdir()
    torch.save({"model": official_state_dict(model)}, paths["zip-pth"])
    torch.save(
        {"model": official_state_dict(model)}, paths["legacy-pth"], _use_new_zipfile_serialization=False
    )
    save_model(model, str(paths["safetensors"]))
    convert_checkpoint(paths["zip-pth"], paths["pdparams"])
    return paths


def soak(count: int, seed: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        paths = _sources(Path(tmp))
        print(
            f"{'format':12} {'cases':>6} {'refused':>8} {'identical':>9} {'different':>9} "
            f"{'loaded':>7} {'tracebacks':>10} {'hangs':>6} {'crashes':>7} {'peak RSS':>9}"
        )
        bad = 0
        for fmt, src in paths.items():
            report = src.parent / "report.json"
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CHILD.format(limit=LIMIT),
                    fmt,
                    str(src),
                    str(count),
                    str(seed),
                    str(report),
                ],
                capture_output=True,
                text=True,
            )
            result = json.loads(report.read_text()) if report.exists() else {"done": 0, "counts": {}}
            crashed = done.returncode != 0
            c = result["counts"]
            print(
                f"{fmt:12} {result['done']:>6} {c.get('refused', 0):>8} {c.get('identical', 0):>9} "
                f"{c.get('different', 0):>9} {c.get('loaded', 0):>7} {c.get('tracebacks', 0):>10} "
                f"{c.get('hangs', 0):>6} {int(crashed):>7} "
                f"{result.get('peak_rss_mb', float('nan')):>7.0f} MB"
            )
            for example in result.get("examples", []):
                print(f"    case {example[0]}: {example[1]}")
            if crashed:
                print(f"    child exited {done.returncode} after case {result['done']}: {done.stderr[-500:]}")
            bad += crashed + c.get("tracebacks", 0) + c.get("hangs", 0)
        return 1 if bad else 0


def classes() -> int:
    """Each class of test_hostile.py, as ``convert.py`` meets it in a fresh bounded process."""
    from tests import hostile as h
    from tests.test_hostile import (
        SAFETENSORS_CASES,
        _pdparams_cases,
        _safetensors,
        _state_attacks,
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pdparams = {
            "1 nesting: 200k-deep tuple key (.pdparams)": h.deep_tuple_key(200_000),
            "1 nesting: 200k-deep lists (.pdparams)": h.deep_lists(200_000),
            **{f"2 memory: {k} (.pdparams)": v[0] for k, v in _pdparams_cases().items()},
        }
        for n, (name, data) in enumerate(pdparams.items()):
            src = folder / f"p{n}.pdparams"
            src.write_bytes(data)
            rows.append((name, h.convert_bounded(src, folder / "o.safetensors", "--to", "torch")))
        deep = h.EMPTY_DICT + h.EMPTY_TUPLE + h.TUPLE1 * 200_000 + h.i(1) + h.SETITEM
        for legacy in (False, True):
            kind = "legacy" if legacy else "zip"
            make = (
                (lambda p, b, st=None: h.legacy_torch(p, h.pickle_of(b), st or {}))
                if legacy
                else (lambda p, b, st=None: h.torch_zip(p, h.pickle_of(b), st))
            )
            src = make(folder / f"deep-{kind}.pth", deep)
            rows.append(
                (
                    f"1 nesting: 200k-deep tuple key ({kind} .pth)",
                    h.convert_bounded(src, folder / "o.pdparams"),
                )
            )
            body = h.EMPTY_DICT + h.s("optimizer") + h.numpy_array((500_000_000,), "O8", b"") + h.SETITEM
            src = make(folder / f"obj-{kind}.pth", body)
            rows.append(
                (
                    f"2 memory: object array in 'optimizer' ({kind} .pth)",
                    h.convert_bounded(src, folder / "o.pdparams"),
                )
            )
            attack = _state_attacks()["BUILD on a storage type"]
            src = make(folder / f"state-{kind}.pth", attack, {"0": bytes(16)})
            rows.append(
                (
                    f"4 state: BUILD on torch.FloatStorage ({kind} .pth)",
                    h.convert_bounded(src, folder / "o.pdparams"),
                )
            )
            body = h.EMPTY_DICT + h.s("w") + h.tensor("0", 4, h.f(0.5), (h.i(4),), (h.i(1),)) + h.SETITEM
            src = make(folder / f"geom-{kind}.pth", body, {"0": bytes(16)})
            rows.append(
                (f"5 fields: storage offset 0.5 ({kind} .pth)", h.convert_bounded(src, folder / "o.pdparams"))
            )
        import zipfile

        bomb = folder / "bomb.pth"
        h.torch_zip(
            bomb,
            h.pickle_of(
                h.EMPTY_DICT
                + h.s("w")
                + h.tensor("0", 512 << 20, h.i(0), (h.i(512 << 20),), (h.i(1),))
                + h.SETITEM
            ),
        )
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(bomb, "a", compresslevel=1) as z, z.open(info, "w", force_zip64=True) as m:
            for _ in range(2048):
                m.write(bytes(1 << 20))
        rows.append(
            (
                f"3 zip bomb: storage inflating to 2 GiB ({bomb.stat().st_size >> 10} KiB file)",
                h.convert_bounded(bomb, folder / "o.pdparams"),
            )
        )
        for name, header in SAFETENSORS_CASES.items():
            src = folder / "s.safetensors"
            src.write_bytes(
                _safetensors("{}", length=1 << 40) if header is None else _safetensors(header, bytes(4))
            )
            rows.append((f"5 fields: safetensors {name}", h.convert_bounded(src, folder / "o.pdparams")))
        huge = folder / "huge.pth"
        with open(huge, "wb") as f:
            f.write(b"PK\x03\x04")
            f.truncate(20 << 30)
        rows.append(
            (
                "10 --json: 20 GiB invalid (sparse) file",
                h.convert_bounded(huge, folder / "o.pdparams", "--json"),
            )
        )
    print(f"{'class: attack':70} {'exit':>4} {'time':>7} {'peak RSS':>9}  message")
    for name, o in rows:
        line = o.stderr.strip().splitlines()
        message = (line[0] if len(line) == 1 else f"{len(line)} lines!")[:150]
        print(f"{name:70} {o.returncode:>4} {o.seconds:>6.2f}s {o.peak_rss_mb:>6.0f} MB  {message}")
    return 0 if all(o.returncode == 2 and len(o.stderr.strip().splitlines()) == 1 for _, o in rows) else 1


NETWORK_CASES = (
    "trickled manifest headers",
    "trickled manifest body",
    "trickled weights",
    "endless weights",
    "weights announced as 4 GB",
    "endless manifest",
    "not HTTP",
    "70 kB header line",
    "chunked body cut short",
    "Content-Length body cut short",
    "Content-Length: 12abc",
    "manifest nested 100k deep",
    "manifest number of 6000 digits",
    "FIFO manifest in a folder location",
    "cached file linked to /dev/zero",
    "64 GiB sparse cached file",
    "full cache (1 MiB tmpfs)",
)


def network_case(name: str) -> dict:
    """Run one network case in this process: its outcome, time, peak RSS and litter."""
    os.environ.pop("COAT_PADDLE_WEIGHTS_URL", None)
    os.environ["COAT_PADDLE_TIMEOUT"] = "1"
    from paddle_model import hub
    from paddle_model.errors import WeightsError
    from tests import test_hostile_network as t

    manifest, weights = t.fake_release(2 << 20 if name.startswith("full cache") else 4096)
    data = t.reply(weights)
    hostile, on = {
        "trickled manifest headers": (t.trickle(t.reply(manifest), 10), "manifest.json"),
        "trickled manifest body": (t.trickle(t.reply(manifest), 60), "manifest.json"),
        "trickled weights": (t.trickle(data, len(data) - len(weights) + 5), t.WEIGHTS),
        "endless weights": (t.endless(b"Connection: close\r\n"), t.WEIGHTS),
        "weights announced as 4 GB": (t.endless(b"Content-Length: 4000000000\r\n"), t.WEIGHTS),
        "endless manifest": (t.endless(b"Connection: close\r\n"), "manifest.json"),
        "not HTTP": (t.sends(b"SSH-2.0-OpenSSH_9.6\r\n"), "manifest.json"),
        "70 kB header line": (
            t.sends(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 70_000 + b"\r\n\r\n"),
            "manifest.json",
        ),
        "chunked body cut short": (
            t.sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + weights[:1000]),
            t.WEIGHTS,
        ),
        "Content-Length body cut short": (t.sends(data[: -len(weights) + 1000]), t.WEIGHTS),
        "Content-Length: 12abc": (t.sends(t.reply(weights, b"Content-Length: 12abc\r\n")), t.WEIGHTS),
        "manifest nested 100k deep": (t.sends(t.reply(b"[" * 100_000)), "manifest.json"),
        "manifest number of 6000 digits": (
            t.sends(t.reply(b'{"schema_version": 2, "params": ' + b"7" * 6000 + b"}")),
            "manifest.json",
        ),
    }.get(name, (None, t.WEIGHTS))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        os.environ["COAT_PADDLE_CACHE"] = str(cache)
        mounted = False
        with t.release_server(manifest, weights, hostile, on) as url:
            location = url
            if name == "FIFO manifest in a folder location":
                folder = Path(tmp) / "location" / t.VARIANT
                folder.mkdir(parents=True)
                os.mkfifo(folder / "manifest.json")
                location = str(folder.parent)
            elif name.startswith("cached file") or name.startswith("64 GiB"):
                path = hub.fetch(t.VARIANT, url, progress=False)
                if name.startswith("cached file"):
                    path.unlink()
                    path.symlink_to("/dev/zero")
                else:
                    with open(path, "r+b") as f:
                        f.truncate(64 << 30)
            elif name.startswith("full cache"):
                done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)])
                mounted = done.returncode == 0
                if not mounted:
                    return dict(outcome="not run: cannot mount a tmpfs (needs root)", seconds=0.0)
            start = time.monotonic()
            try:
                hub.fetch(t.VARIANT, location, progress=False)
                outcome = "downloaded and verified"
            except WeightsError as e:
                outcome = f"WeightsError: {e}" if "\n" not in str(e) else "multi-line WeightsError!"
            except BaseException as e:
                outcome = f"RAW {type(e).__name__}: {' '.join(str(e).split())[:200]}"
            seconds = time.monotonic() - start
        litter = sorted(p.name for p in cache.rglob("*") if p.name.startswith("."))
        if mounted:
            subprocess.run(["umount", str(cache)], check=True)
    return dict(outcome=outcome, seconds=seconds, litter=litter)


def network() -> int:
    """Each network case in a fresh process: outcome, time, peak RSS, litter."""
    print(f"{'case':36} {'time':>7} {'peak RSS':>9} {'litter':>6}  outcome")
    bad = 0
    for name in NETWORK_CASES:
        done = subprocess.run(
            [sys.executable, __file__, "--network-case", name],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            result = dict(
                outcome=f"CRASH (exit {done.returncode}): {done.stderr.strip()[-200:]}", seconds=0.0
            )
        outcome = result["outcome"]
        ok = outcome.startswith("WeightsError:") or outcome == "downloaded and verified"
        ok = ok and not result.get("litter") and result["seconds"] < 10
        bad += not ok
        print(
            f"{name:36} {result['seconds']:>6.2f}s {result.get('peak_rss_mb', float('nan')):>6.0f} MB "
            f"{len(result.get('litter', [])):>6}  {'' if ok else 'FAIL '}{outcome[:160]}"
        )
    return 1 if bad else 0


KERNEL_INPUTS = {
    "0x0": (1, 3, 0, 0),
    "16x16": (1, 3, 16, 16),
    "31x31": (1, 3, 31, 31),
    "64x16": (1, 3, 64, 16),
    "1 channel 64x64": (1, 1, 64, 64),
    "5-D 64x64": (1, 1, 3, 64, 64),
}

_KERNEL_CHILD = r"""
import json, signal, sys, time, traceback
import numpy as np
import paddle
import paddle_model
from converter.errors import CoatError
shapes = json.loads(sys.argv[1])
class Hang(Exception):
    pass
def alarm(*_):
    raise Hang
signal.signal(signal.SIGALRM, alarm)
rows = []
for variant in ("coat_lite_tiny", "coat_tiny"):
    model = paddle_model.create_model(variant)
    model.eval()
    for name, shape in shapes.items():
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        start = time.monotonic()
        signal.alarm(60)
        try:
            with paddle.no_grad():
                first = model(paddle.to_tensor(x)).numpy()
                second = model(paddle.to_tensor(x)).numpy()
            same = np.array_equal(first, second, equal_nan=True)
            outcome = f"returned {list(first.shape)}" + ("" if same else ", differs between two calls!")
            outcome += "" if np.isfinite(first).all() else ", not finite!"
        except CoatError as e:
            outcome = f"{type(e).__name__}: {e}" if "\n" not in str(e) else "multi-line error!"
        except Hang:
            outcome = "HANG"
        except BaseException as e:
            outcome = f"RAW {type(e).__name__}: {' '.join(str(e).split())[:160]}"
        finally:
            signal.alarm(0)
        rows.append((variant, name, outcome, time.monotonic() - start))
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps(dict(rows=rows, peak_rss_mb=peak / 1024)))
"""


def kernel_inputs() -> int:
    """Odd inputs through CoaT in both kernels modes, each mode in a fresh process."""
    print(f"{'kernels':8} {'variant':15} {'input':16} {'time':>7}  outcome")
    bad = 0
    for mode in ("1", "0"):
        env = {**os.environ, "COAT_PADDLE_KERNELS": mode}
        done = subprocess.run(
            [sys.executable, "-c", _KERNEL_CHILD, json.dumps(KERNEL_INPUTS)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            print(f"{mode:8} CRASH (exit {done.returncode}): {done.stderr.strip()[-300:]}")
            bad += 1
            continue
        for variant, name, outcome, seconds in result["rows"]:
            raw = outcome.startswith(("RAW", "HANG", "multi-line")) or "!" in outcome
            bad += raw
            print(
                f"{mode:8} {variant:15} {name:16} {seconds:>6.2f}s  {'FAIL ' if raw else ''}{outcome[:150]}"
            )
        print(f"{mode:8} peak RSS {result['peak_rss_mb']:.0f} MB")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="mutations per format")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", action="store_true", help="the per-class table instead of the soak")
    p.add_argument("--network", action="store_true", help="hostile servers and planted cache entries")
    p.add_argument("--kernel-inputs", action="store_true", help="odd input shapes in both kernels modes")
    p.add_argument("--network-case", help=argparse.SUPPRESS)  # one case, in the child process
    args = p.parse_args()
    if args.network_case:
        result = network_case(args.network_case)
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        print(json.dumps({**result, "peak_rss_mb": peak / 1024}))
        return 0
    if args.network:
        return network()
    if args.kernel_inputs:
        return kernel_inputs()
    return classes() if args.classes else soak(args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
