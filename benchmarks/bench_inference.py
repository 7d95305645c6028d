"""Forward-pass speed and memory: the Paddle CoaT against timm's, CPU fp32.

    python benchmarks/bench_inference.py [--variants coat_tiny ...] [--batch 1 8] [--repeats 5]
                                         [--rounds 1] [--deployed] [--deployed-ops]

Each measurement runs in its own process (so peak RSS belongs to one framework), torch and
Paddle alternating per variant and batch (``--rounds`` times, so that a slow spell of a shared
machine falls on both). A process builds the model, warms up, then times ``repeats`` forward
passes of a seeded batch; the table gives the medians over all passes, the largest peak RSS,
and Paddle/torch ratios. ``--deployed`` adds the exported model (``paddle_model.export --kernels``, the compiled
ops in the graph) through Paddle Inference with oneDNN, ``--deployed-ops`` the portable export
(Paddle's ops only).

Thread settings (``--env tuned``, the default, for every process of both frameworks):
``MKL_NUM_THREADS=2`` (Paddle's math library, which otherwise runs one thread),
``OMP_NUM_THREADS=1`` (Paddle's OpenMP ops, whose spinning threads otherwise fight MKL's on
two cores), ``MKL_DEBUG_CPU_TYPE=5`` (MKL's AVX2 path on AMD CPUs) and
``MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=1073741824`` (glibc keeps large blocks in its
heap, so a large temporary tensor reuses memory instead of page-faulting fresh pages on every
forward pass; Paddle's eager CPU ops otherwise spend up to half their time in those faults);
torch runs with ``torch.set_num_threads(2)``. ``--env default`` leaves the environment as it is.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHILD_TIMINGS, TUNED_ENV, child_timings, machine, median, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = CHILD_TIMINGS + f"""
import json, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {str(ROOT)!r})
import numpy as np
from paddle_model.variants import get_variant
name, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = get_variant(name).img_size
x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
def timed(run):
    print(json.dumps(timings(run, repeats)))
"""

TORCH = PRELUDE + """
import torch
torch.set_num_threads(2)
from reference.timm_model import build_timm
model = build_timm(name)
xt = torch.from_numpy(x)
with torch.no_grad():
    timed(lambda: model(xt))
"""

PADDLE = PRELUDE + """
import paddle
import paddle_model
model = paddle_model.create_model(name)
model.eval()
xp = paddle.to_tensor(x)
with paddle.no_grad():
    timed(lambda: model(xp).numpy())
"""

DEPLOYED = PRELUDE + """
import os, tempfile
from paddle_model.export import create_predictor, export
kernels = sys.argv[4] == "kernels"
with tempfile.TemporaryDirectory() as tmp:  # the predictor holds the model once created
    prefix = os.path.join(tmp, "model")
    export(name, None, prefix, kernels=kernels, size=size if kernels else None)
    predictor = create_predictor(prefix, threads=2)
handle = predictor.get_input_handle(predictor.get_input_names()[0])
output = predictor.get_output_handle(predictor.get_output_names()[0])
def run():
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    predictor.run()
    output.copy_to_cpu()
timed(run)
"""


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from paddle_model.variants import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5, help="timed passes per process")
    p.add_argument("--rounds", type=int, default=1,
                   help="processes per side, alternating; the median is over all their passes")
    p.add_argument("--deployed", action="store_true",
                   help="also time the export with kernels through Paddle Inference (oneDNN)")
    p.add_argument("--deployed-ops", action="store_true",
                   help="also time the portable export (Paddle's ops) through Paddle Inference")
    p.add_argument("--env", choices=["tuned", "default"], default="tuned",
                   help="thread settings for the measured processes (see the module docstring)")
    args = p.parse_args(argv)
    if args.env == "tuned":
        os.environ.update(TUNED_ENV)
    sides = [("torch", TORCH, ()), ("paddle", PADDLE, ())]
    deployed = [("deployed", "kernels")] * args.deployed + [("deployed-ops", "ops")] * args.deployed_ops
    sides += [(side, DEPLOYED, (graph,)) for side, graph in deployed]
    print(machine())
    print(f"{args.repeats} timed forward passes after one warm-up, each side in its own process, "
          f"{args.rounds} round(s) of the sides in turn; torch.set_num_threads(2)\n")
    header = f"{'variant':22} {'batch':>5} {'timm ms':>9} {'paddle ms':>10} {'ratio':>6} {'timm MB':>8} {'paddle MB':>10} {'ratio':>6}"
    for side, _ in deployed:
        header += f" {side + ' ms':>15} {'ratio':>6}"
    print(header, flush=True)
    for name in args.variants:
        for batch in args.batch:
            times = {side: [] for side, _, _ in sides}
            peak = {side: 0.0 for side, _, _ in sides}
            for _ in range(args.rounds):  # the sides alternate, round after round
                for side, code, extra in sides:
                    try:
                        _, rss, out = run_child(code, name, str(batch), str(args.repeats), *extra)
                        times[side] += child_timings(out)
                        peak[side] = max(peak[side], rss / 1e6)
                    except RuntimeError as e:
                        print(f"  ({side} failed: {str(e).splitlines()[-1]})", file=sys.stderr)
            result = {side: (median(times[side]) * 1000 if times[side] else float("nan"),
                             peak[side] if times[side] else float("nan")) for side in times}
            (t, tm), (pd, pm) = result["torch"], result["paddle"]
            row = (f"{name:22} {batch:>5} {t:>9.1f} {pd:>10.1f} {pd / t:>6.2f} {tm:>8.0f} {pm:>10.0f} "
                   f"{pm / tm:>6.2f}")
            for side, _ in deployed:
                d, _ = result[side]
                row += f" {d:>15.1f} {d / t:>6.2f}"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
