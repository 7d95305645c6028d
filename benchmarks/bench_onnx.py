"""ONNX export of every variant: paddle2onnx, parity in onnxruntime, and its speed beside Paddle
Inference and timm, CPU fp32.

    python benchmarks/bench_onnx.py [--variants coat_tiny ...] [--batch 1] [--repeats 5] [--rounds 2]

For each variant, ``python -m paddle_model.export V PREFIX --onnx`` (seeded random weights: speed
and parity do not depend on trained values) exports the portable model, converts it with
paddle2onnx and checks onnxruntime against the eager model at the variant's size and 230x200;
its wall time and the two differences are reported. Then three sides are timed, each in its
own process, in turn for ``--rounds`` rounds (so a slow spell of a shared machine falls on all):
timm (eager torch), Paddle Inference (oneDNN) on the exported ``.json`` and onnxruntime (CPU
provider) on the ``.onnx`` of that same export. Medians over all timed passes; thread settings
as ``bench_inference.py`` (``--env tuned``): two threads for every side.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TIME_PREDICTOR,
    TIME_TIMM,
    TUNED_ENV,
    child_timings,
    machine,
    median,
    run_child,
    seeded_batch_prelude,
)

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = seeded_batch_prelude(ROOT, "prefix")

TORCH = PRELUDE + "import torch\ntorch.set_num_threads(2)\n" + TIME_TIMM

PADDLE_INFERENCE = (
    PRELUDE
    + """
from paddle_model.export import create_predictor
predictor = create_predictor(prefix, threads=2)
"""
    + TIME_PREDICTOR
)

ORT = (
    PRELUDE
    + """
import onnxruntime
options = onnxruntime.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
options.log_severity_level = 3
session = onnxruntime.InferenceSession(prefix + ".onnx", options, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: x}
timed(lambda: session.run(None, feed))
"""
)

SIDES = (("timm", TORCH), ("paddle inference", PADDLE_INFERENCE), ("onnxruntime", ORT))
_CHECK = re.compile(r"input (\[[^]]*\]): logits max\|d\|/max\|ref\| (\S+)")


def export_onnx(name: str, prefix: str) -> tuple[float, list[tuple[str, float]]]:
    """Run the export command as a user does: (wall seconds, [(input shape, relative difference)])."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import paddle; paddle.seed(0); "
        "from paddle_model.export import main; sys.exit(main(sys.argv[1:]))"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, name, prefix, "--onnx"], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"export --onnx of {name} failed ({done.returncode}): {tail}")
    return wall, [(shape, float(rel)) for shape, rel in _CHECK.findall(done.stdout)]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from paddle_model.variants import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--repeats", type=int, default=5, help="timed passes per process")
    p.add_argument("--rounds", type=int, default=2, help="processes per side, in turn")
    p.add_argument(
        "--env",
        choices=["tuned", "default"],
        default="tuned",
        help="thread settings for the measured processes (see bench_inference.py)",
    )
    args = p.parse_args(argv)
    if args.env == "tuned":
        os.environ.update(TUNED_ENV)
    print(machine())
    print(
        f"{args.repeats} timed passes after one warm-up, each side in its own process, {args.rounds} "
        "round(s) of the sides in turn; torch.set_num_threads(2), Paddle Inference 2 threads (oneDNN), "
        "onnxruntime intra_op_num_threads=2\n"
    )
    print(f"{'variant':22} {'export+onnx s':>13} {'ort vs eager, default size':>27} {'at 230x200':>11}")
    rows = []
    for name in args.variants:
        with tempfile.TemporaryDirectory() as tmp:  # an export is up to 180 MB: removed per variant
            prefix = os.path.join(tmp, name)
            wall, checks = export_onnx(name, prefix)
            print(f"{name:22} {wall:>13.1f} {checks[0][1]:>27.2e} {checks[1][1]:>11.2e}", flush=True)
            for batch in args.batch:
                times = {side: [] for side, _ in SIDES}
                for _ in range(args.rounds):
                    for side, code in SIDES:
                        _, _, out = run_child(code, name, str(batch), str(args.repeats), prefix)
                        times[side] += child_timings(out)
                rows.append((name, batch, *(median(times[side]) * 1000 for side, _ in SIDES)))
    print(
        f"\n{'variant':22} {'batch':>5} {'timm ms':>9} {'paddle inf ms':>14} {'ort ms':>8} "
        f"{'ort/timm':>9} {'ort/paddle inf':>15}"
    )
    for name, batch, t, pi, ort in rows:
        print(f"{name:22} {batch:>5} {t:>9.1f} {pi:>14.1f} {ort:>8.1f} {ort / t:>9.2f} {ort / pi:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
