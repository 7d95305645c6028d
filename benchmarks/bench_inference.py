"""Forward-pass speed and memory: the Paddle CoaT against timm's and ONNX Runtime's, CPU fp32.

    python benchmarks/bench_inference.py [--variants coat_tiny ...] [--batch 1 8] [--repeats 5]
                                         [--rounds 1] [--no-tuned] [--no-ort] [--deployed]
                                         [--deployed-ops]

Each measurement runs in its own process (so peak RSS belongs to one framework), the sides
alternating per variant and batch (``--rounds`` times, so that a slow spell of a shared machine
falls on all). A process builds the model, warms up, then times ``repeats`` forward passes of a
seeded batch; the table gives the medians over all passes, the largest peak RSS, the ratios to
timm, and the machine's load average when the row was done.

The sides, as a user runs them (``installed``: none of ``_common.THREAD_VARS`` set, whatever
the shell running this has):
- ``timm``: timm's CoaT, torch at its defaults;
- ``paddle``: ``paddle_model.create_model``, ``eval()``, under ``paddle.no_grad()``;
  paddle_model.runtime configures the CPU at the first call;
- ``tuned`` (unless ``--no-tuned``): the same with the five variables set by hand before Python
  starts (``_common.TUNED_ENV``: ``MKL_NUM_THREADS=2 OMP_NUM_THREADS=1 MKL_DEBUG_CPU_TYPE=5
  MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=1073741824``), as the earlier rounds ran;
- ``ort`` (unless ``--no-ort``): ONNX Runtime on timm's model exported by ``torch.onnx.export``
  with a dynamic batch, ``--ort-threads`` intra-op threads (default 2). torch 2.14's default
  exporter (``dynamo=True``) needs onnxscript and took 164 s for coat_tiny on the 2-core VM;
  the TorchScript exporter (``dynamo=False``) takes seconds and gives the same outputs within
  1e-6 of their maximum, so that is the one used (once per variant, before its rows);
- ``--deployed`` adds the exported model (``paddle_model.export --kernels``, the compiled ops
  in the graph) through Paddle Inference with oneDNN, ``--deployed-ops`` the portable export
  (Paddle's ops only);
- ``--same-process`` adds ``timm+pd``: timm timed in a process where a ``paddle_model`` model
  ran one forward pass first (so ``paddle_model.runtime`` has configured the process), as
  ``python -m reference.evaluate`` runs both; its ratio to ``timm`` is what Paddle's settings
  cost torch.

``--paddle-python PYTHON`` runs the Paddle sides (paddle, tuned, deployed) with another
interpreter, such as a fresh venv where the wheel was installed with ``pip install
'coat_paddle-*.whl[cpu]'``, from a temporary directory and without this checkout on its path:
the package measured is then the installed one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TIME_PREDICTOR,
    TIME_TIMM,
    child_timings,
    load,
    machine,
    median,
    run_child,
    seeded_batch_prelude,
)

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = seeded_batch_prelude(ROOT)

TORCH = PRELUDE + TIME_TIMM

# after the prelude: only paddle_model, which may come from the checkout or from a wheel
PADDLE = """
import paddle
import paddle_model
model = paddle_model.create_model(name)
model.eval()
xp = paddle.to_tensor(x)
with paddle.no_grad():
    timed(lambda: model(xp).numpy())
"""

# timm once paddle_model has run in the process (its first call configures the CPU settings)
TORCH_AFTER_PADDLE = (
    PRELUDE
    + """
import torch  # first, as reference.evaluate imports it
import paddle
import paddle_model
with paddle.no_grad():
    paddle_model.create_model(name).eval()(paddle.to_tensor(x)).numpy()
"""
    + TIME_TIMM
)

ORT_EXPORT = f"""
import sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {str(ROOT)!r})
import torch
from paddle_model.variants import get_variant
from reference.timm_model import build_timm
name, path = sys.argv[1], sys.argv[2]
size = get_variant(name).img_size
model = build_timm(name).eval()
with torch.no_grad():
    torch.onnx.export(model, (torch.zeros(2, 3, size, size),), path, dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={{"x": {{0: "batch"}}, "logits": {{0: "batch"}}}})
"""

ORT = (
    PRELUDE
    + """
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[5])
options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[4], options, providers=["CPUExecutionProvider"])
timed(lambda: session.run(None, {"x": x}))
"""
)

DEPLOYED = (
    """
import os, tempfile
from paddle_model.export import create_predictor, export
kernels = sys.argv[4] == "kernels"
with tempfile.TemporaryDirectory() as tmp:  # the predictor holds the model once created
    prefix = os.path.join(tmp, "model")
    export(name, None, prefix, kernels=kernels, size=size if kernels else None)
    predictor = create_predictor(prefix, threads=2)
"""
    + TIME_PREDICTOR
)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from paddle_model.variants import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5, help="timed passes per process")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="processes per side, alternating; the median is over all their passes",
    )
    p.add_argument("--no-tuned", action="store_true", help="leave out Paddle with the variables set by hand")
    p.add_argument("--no-ort", action="store_true", help="leave out ONNX Runtime on timm's export")
    p.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime's intra-op threads")
    p.add_argument(
        "--deployed",
        action="store_true",
        help="also time the export with kernels through Paddle Inference (oneDNN)",
    )
    p.add_argument(
        "--deployed-ops",
        action="store_true",
        help="also time the portable export (Paddle's ops) through Paddle Inference",
    )
    p.add_argument(
        "--same-process",
        action="store_true",
        help="also time timm in a process where paddle_model ran first (timm+pd)",
    )
    p.add_argument(
        "--paddle-python",
        metavar="PYTHON",
        help="the interpreter of the Paddle sides, e.g. a venv with the wheel installed; they then "
        "run from a temporary directory without this checkout on their path",
    )
    args = p.parse_args(argv)
    # the Paddle sides' prelude and interpreter: this checkout's, or only what PYTHON has installed
    # (absolute: the sides start in another directory; a venv's python is a link, kept as it is)
    paddle_prelude = seeded_batch_prelude(None if args.paddle_python else ROOT)
    where = {}
    if args.paddle_python:
        args.paddle_python = os.path.abspath(args.paddle_python)
        where = {"python": args.paddle_python, "env": {"PYTHONPATH": None}}
    # (column, child code, extra arguments, environment mode, interpreter); timm first: the base
    sides = [
        ("timm", TORCH, (), "installed", {}),
        ("paddle", paddle_prelude + PADDLE, (), "installed", where),
    ]
    if not args.no_tuned:
        sides.append(("tuned", paddle_prelude + PADDLE, (), "tuned", where))
    if not args.no_ort:
        sides.append(("ort", ORT, ("{onnx}", str(args.ort_threads)), "installed", {}))
    sides += [("deployed", paddle_prelude + DEPLOYED, ("kernels",), "installed", where)] * args.deployed
    sides += [("deployed-ops", paddle_prelude + DEPLOYED, ("ops",), "installed", where)] * args.deployed_ops
    sides += [("timm+pd", TORCH_AFTER_PADDLE, (), "installed", {})] * args.same_process
    print(machine())
    if args.paddle_python:
        print(f"the Paddle sides run {args.paddle_python}: {_installed(args.paddle_python)}")
    print(f"load average at the start: {load()}")
    print(
        f"{args.repeats} timed forward passes after one warm-up, each side in its own process, "
        f"{args.rounds} round(s) of the sides in turn; timm, paddle, ort, deployed and timm+pd with none of "
        f"the thread variables set, tuned with _common.TUNED_ENV\n"
    )
    timed_sides = [side for side, *_ in sides[1:]]
    header = f"{'variant':22} {'batch':>5} {'timm ms':>9}"
    for side in timed_sides:
        header += f" {side + ' ms':>{max(10, len(side) + 4)}} {'ratio':>6}"
    header += f" {'timm MB':>8} {'paddle MB':>10} {'ratio':>6}  load"
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.paddle_python:  # the Paddle sides' interpreter starts outside the checkout
            where["cwd"] = tmp
        for name in args.variants:
            onnx = Path(tmp) / f"{name}.onnx"
            if not args.no_ort:
                run_child(ORT_EXPORT, name, str(onnx), mode="installed")
            for batch in args.batch:
                print(_row(name, batch, sides, args, onnx), flush=True)
            onnx.unlink(missing_ok=True)
    print(f"\nload average at the end: {load()}")
    return 0


def _row(name: str, batch: int, sides: list, args, onnx: Path) -> str:
    times = {side: [] for side, *_ in sides}
    peak = {side: 0.0 for side, *_ in sides}
    for _ in range(args.rounds):  # the sides alternate, round after round
        for side, code, extra, mode, where in sides:
            extra = tuple(a.format(onnx=onnx) for a in extra)
            try:
                _, rss, out = run_child(code, name, str(batch), str(args.repeats), *extra, mode=mode, **where)
                times[side] += child_timings(out)
                peak[side] = max(peak[side], rss / 1e6)
            except RuntimeError as e:
                print(f"  ({side} failed: {str(e).splitlines()[-1]})", file=sys.stderr)
    ms = {side: median(t) * 1000 if t else float("nan") for side, t in times.items()}
    mb = {side: peak[side] if times[side] else float("nan") for side in peak}
    row = f"{name:22} {batch:>5} {ms['timm']:>9.1f}"
    for side, *_ in sides[1:]:
        row += f" {ms[side]:>{max(10, len(side) + 4)}.1f} {ms[side] / ms['timm']:>6.2f}"
    row += f" {mb['timm']:>8.0f} {mb['paddle']:>10.0f} {mb['paddle'] / mb['timm']:>6.2f}"
    return row + f"  {load().split(',')[0]}"


def _installed(python: str) -> str:
    """Where ``python`` imports paddle_model and paddle from, and their versions."""
    code = """
import importlib.metadata, paddle, paddle_model
version = importlib.metadata.version("coat-paddle")
print(f"coat-paddle {version} from {paddle_model.__file__}, paddle {paddle.__version__}")
"""
    _, _, out = run_child(
        code, env={"PYTHONPATH": None}, mode="installed", python=python, cwd=tempfile.gettempdir()
    )
    return out.strip()


if __name__ == "__main__":
    sys.exit(main())
