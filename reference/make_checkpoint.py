"""Write a seeded CoaT checkpoint, as a stand-in for a real one.

    python -m reference.make_checkpoint coat_lite_tiny coat_lite_tiny.pth [--layout timm]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paddle_model.variants import VARIANTS

from .checkpoints import write_official_checkpoint, write_timm_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.make_checkpoint", description=__doc__.split("\n")[0])
    p.add_argument("variant", choices=list(VARIANTS))
    p.add_argument("path", type=Path)
    p.add_argument("--layout", choices=["official", "timm"], default="official",
                   help="official: {'model': state_dict} with the unused norms; timm: timm's state dict")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    args = p.parse_args(argv)
    if args.path.exists() and not args.force:
        print(f"error: {args.path}: already exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    write = write_official_checkpoint if args.layout == "official" else write_timm_checkpoint
    write(args.variant, args.path, seed=args.seed)
    print(f"wrote seeded {args.variant} ({args.layout} layout, seed {args.seed}) to {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
