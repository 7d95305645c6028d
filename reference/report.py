"""Parity of every variant on seeded checkpoints, as a table.

    python -m reference.report [--variants coat_tiny coat_lite_tiny ...] [--batch 2]

Each variant: seeded official-layout checkpoint -> conversion -> timm vs Paddle logits at
the default input size.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from converter.cli import ArgumentParser, command
from converter.pipeline import convert_checkpoint
from converter.variants import VARIANTS

from . import require
from .parity import verify_conversion


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m reference.report", description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args(argv)
    require("python -m reference.report")
    from .checkpoints import write_official_checkpoint

    print(
        f"{'variant':22} {'size':>5} {'logits max|d|':>14} {'max|d|/max|ref|':>16} {'top-1':>6} "
        f"{'worst tensor':>22} {'its max|d|/max|ref|':>20}  verdict"
    )
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            t0 = time.perf_counter()
            src = write_official_checkpoint(name, Path(tmp) / f"{name}.pth")
            dst = Path(tmp) / f"{name}.pdparams"
            convert_checkpoint(src, dst)
            report = verify_conversion(src, dst, name, batch=args.batch)
            failed += not report.ok
            logits = report.logits
            worst = max(report.outputs + report.blocks, key=lambda c: c.max_rel)
            print(
                f"{name:22} {VARIANTS[name].img_size:>5} {logits.max_abs:>14.3e} {logits.max_rel:>16.3e} "
                f"{logits.top1_agree:>6.0%} {worst.name:>22} {worst.max_rel:>20.3e}  "
                f"{'ok' if report.ok else 'FAIL'} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
