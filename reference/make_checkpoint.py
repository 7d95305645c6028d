"""Write a seeded CoaT checkpoint, as a stand-in for a real one.

    python -m reference.make_checkpoint coat_lite_tiny coat_lite_tiny.pth [--layout timm]
    python -m reference.make_checkpoint coat_tiny coat_tiny.safetensors  # as timm's hub files

``--logits FILE.npy`` also saves timm's logits on the seeded input batch
(``reference.parity.seeded_input(2, default size, seed=0)``), for parity checks elsewhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

from converter.cli import ArgumentParser, command
from converter.errors import CoatError
from converter.variants import VARIANTS

from . import require
from .parity import run_torch, seeded_input


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m reference.make_checkpoint", description=__doc__.split("\n")[0])
    p.add_argument("variant", choices=list(VARIANTS))
    p.add_argument("path", type=Path)
    p.add_argument(
        "--layout",
        choices=["official", "timm"],
        default="official",
        help="official: {'model': state_dict} with the unused norms; timm: timm's state dict",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    p.add_argument("--logits", type=Path, help="also save timm's logits on the seeded batch here (.npy)")
    args = p.parse_args(argv)
    require("python -m reference.make_checkpoint", paddle=False)
    from .checkpoints import seeded_model, write_official_checkpoint, write_timm_checkpoint

    if args.path.exists() and not args.force:
        raise CoatError(f"{args.path}: already exists; pass --force to overwrite it")
    if args.path.suffix == ".safetensors":
        from safetensors.torch import save_model

        save_model(seeded_model(args.variant, args.seed), str(args.path))
        layout = "timm hub safetensors"
    else:
        write = write_official_checkpoint if args.layout == "official" else write_timm_checkpoint
        write(args.variant, args.path, seed=args.seed)
        layout = f"{args.layout} layout"
    print(f"wrote seeded {args.variant} ({layout}, seed {args.seed}) to {args.path}")
    if args.logits:
        import numpy as np

        x = seeded_input(2, VARIANTS[args.variant].img_size, seed=0)
        np.save(args.logits, run_torch(seeded_model(args.variant, args.seed), x)[0])
        print(f"wrote timm's logits on the seeded batch to {args.logits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
