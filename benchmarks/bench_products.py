"""The matrix products of one CoaT forward pass: torch's Linear against this project's, CPU fp32.

    python benchmarks/bench_products.py [--variant coat_lite_medium] [--batch 8] [--repeats 7]
                                        [--rounds 2]

Most of a deployed CoaT pass is its Linear layers' products (85 % of coat_lite_medium b8 in
Paddle Inference's profiler), so their speed in each framework bounds the speed ratio of the
whole models. This lists every distinct product shape of the variant at the batch size
(rows x in x out: patch embeddings, qkv, projections, MLP layers), times
``torch.nn.functional.linear`` and ``coat_linear`` (the compiled op: MKL's product plus the
bias) on random data, each side in its own process and the sides in turn ``--rounds`` times,
and prints the medians, GF/s and ratios per shape, then the products of one whole pass: each
shape's median times the number of times a pass computes it. The thread settings are
bench_inference.py's (``MKL_NUM_THREADS=2 OMP_NUM_THREADS=1 MKL_DEBUG_CPU_TYPE=5``, the
malloc thresholds; ``torch.set_num_threads(2)``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHILD_TIMINGS, TUNED_ENV, child_timings, machine, median, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = (
    CHILD_TIMINGS
    + f"""
import json, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {str(ROOT)!r})
shapes, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
if sys.argv[3] == "torch":
    import torch
    torch.set_num_threads(2)
    def product(m, k, n):
        x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        return lambda: torch.nn.functional.linear(x, w, b)
else:
    import paddle
    from paddle_model import kernels
    linear = kernels.op("coat_linear")
    if linear is None:
        sys.exit("coat_linear is not available here (no compiler, or no MKL in this Paddle)")
    def product(m, k, n):
        x, w, b = paddle.randn([m, k]), paddle.randn([k, n]), paddle.randn([n])
        return lambda: linear(x, w, b, False)
print(json.dumps([timings(product(m, k, n), repeats) for m, k, n in shapes]))
"""
)


def pass_products(name: str, batch: int) -> Counter:
    """(rows, in, out) of every Linear product in one forward pass, with its count."""
    from paddle_model.variants import get_variant

    v = get_variant(name)
    counts: Counter = Counter()
    side, channels_in = v.img_size // v.patch_size, 3
    for stage, (dim, depth) in enumerate(zip(v.embed_dims, v.serial_depths)):
        patch = v.patch_size if stage == 0 else 2
        if stage:
            side //= 2
        counts[(batch * side * side, channels_in * patch * patch, dim)] += 1  # patch embedding
        rows, hidden = batch * (side * side + 1), v.mlp_hidden(stage)
        blocks = depth + (v.parallel_depth if stage > 0 else 0)  # parallel blocks: stages 2-4
        for shape in ((rows, dim, 3 * dim), (rows, dim, dim), (rows, dim, hidden), (rows, hidden, dim)):
            counts[shape] += blocks
        channels_in = dim
    return counts


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from paddle_model.variants import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=list(VARIANTS), default="coat_lite_medium")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7, help="timed calls per shape and process")
    p.add_argument("--rounds", type=int, default=2, help="processes per side, in turns")
    args = p.parse_args(argv)
    os.environ.update(TUNED_ENV)
    counts = pass_products(args.variant, args.batch)
    shapes = sorted(counts, key=lambda s: (-s[0], s[1], s[2]))
    print(machine())
    print(
        f"{args.variant} batch {args.batch}: {len(shapes)} product shapes; {args.repeats} timed calls "
        f"each after one warm-up, each side in its own process, {args.rounds} round(s) in turn\n",
        flush=True,
    )
    times = {"torch": [[] for _ in shapes], "paddle": [[] for _ in shapes]}
    for _ in range(args.rounds):  # the sides alternate, round after round
        for side in times:
            _, _, out = run_child(CHILD, json.dumps(shapes), str(args.repeats), side)
            for runs, new in zip(times[side], child_timings(out)):
                runs += new
    print(
        f"{'rows':>6} {'in':>5} {'out':>5} {'count':>5} {'torch ms':>9} {'GF/s':>6} "
        f"{'coat ms':>9} {'GF/s':>6} {'ratio':>6}"
    )
    total = {"torch": 0.0, "paddle": 0.0}
    flops = 0.0
    for i, (m, k, n) in enumerate(shapes):
        t, c = (median(times[side][i]) for side in ("torch", "paddle"))
        f = 2.0 * m * k * n
        print(
            f"{m:>6} {k:>5} {n:>5} {counts[(m, k, n)]:>5} {t * 1e3:>9.2f} {f / t / 1e9:>6.1f} "
            f"{c * 1e3:>9.2f} {f / c / 1e9:>6.1f} {c / t:>6.2f}"
        )
        total["torch"] += counts[(m, k, n)] * t
        total["paddle"] += counts[(m, k, n)] * c
        flops += counts[(m, k, n)] * f
    t, c = total["torch"], total["paddle"]
    print(
        f"\none pass, {flops / 1e9:.1f} GFLOP: torch {t * 1e3:.0f} ms ({flops / t / 1e9:.0f} GF/s), "
        f"coat_linear {c * 1e3:.0f} ms ({flops / c / 1e9:.0f} GF/s), ratio {c / t:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
