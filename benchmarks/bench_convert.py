"""Conversion speed and memory: convert.py against the hand-written script users start from.

    python benchmarks/bench_convert.py [--variant coat_lite_medium] [--repeats 3] [--checkpoint X.pth]

The hand-written way: ``torch.load``, transpose every 2-D tensor, ``paddle.to_tensor``,
``paddle.save``. Both run as fresh processes, interleaved; the table gives the medians of the
whole process (imports included) and of its peak RSS, and the ratios.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

HAND_WRITTEN = """
import sys, torch, paddle
state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)["model"]
out = {k: paddle.to_tensor(v.t().numpy() if v.ndim == 2 else v.numpy()) for k, v in state.items()}
paddle.save(out, sys.argv[2])
"""

OURS = f"""
import runpy, sys
sys.argv = ["convert.py", sys.argv[1], sys.argv[2], "--force"]
runpy.run_path({str(ROOT / "convert.py")!r}, run_name="__main__")
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="coat_lite_medium")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", type=Path, help="an official-layout .pth (default: a seeded one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = args.checkpoint
        if src is None:  # made by a child: a parent holding torch would inflate the children's
            src = Path(tmp) / f"{args.variant}.pth"  # peak RSS (it counts until they exec)
            subprocess.run(
                [sys.executable, "-m", "reference.make_checkpoint", args.variant, str(src)],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
        size = src.stat().st_size
        runs = {"hand-written": [], "convert.py": []}
        for _ in range(args.repeats):
            for name, code in (("hand-written", HAND_WRITTEN), ("convert.py", OURS)):
                out = Path(tmp) / "out.pdparams"
                out.unlink(missing_ok=True)  # neither side pays for deleting an old output
                runs[name].append(run_child(code, str(src), str(out))[:2])
    print(machine())
    print(f"source: {src.name}, {size / 1e6:.1f} MB; {args.repeats} runs each, interleaved\n")
    print(f"{'':14} {'wall s (median)':>16} {'peak RSS MB':>12} {'RSS / file':>11}")
    stats = {}
    for name, values in runs.items():
        wall, rss = median(v[0] for v in values), median(v[1] for v in values)
        stats[name] = (wall, rss)
        print(f"{name:14} {wall:>16.2f} {rss / 1e6:>12.0f} {rss / size:>11.2f}")
    speedup = stats["hand-written"][0] / stats["convert.py"][0]
    peak = stats["convert.py"][1] / size
    print(f"\nconvert.py is {speedup:.1f}x faster; peak RSS {peak:.2f}x the checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
