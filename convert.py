"""Convert a PyTorch CoaT checkpoint to Paddle weights.

    python convert.py coat_tiny.pth coat_tiny.pdparams [--verify]

Exit codes: 0 done, 1 ``--verify`` found the outputs apart, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from converter.cli import ArgumentParser, command, fail
from converter.extras import install_hint
from converter.variants import VARIANTS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="convert.py",
        description="Convert a PyTorch CoaT checkpoint (official mlpc-ucsd or timm, .pth or "
        ".safetensors) into Paddle weights (.pdparams or .safetensors).",
    )
    p.add_argument("src", help="PyTorch checkpoint (or Paddle weights, with --to torch)")
    p.add_argument("dst", help="output file: .pdparams or .safetensors (or .pth, to torch)")
    p.add_argument("--variant", choices=list(VARIANTS), help="skip detection, use this variant")
    p.add_argument("--ema", action="store_true", help="take the EMA weights of a training checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.add_argument(
        "--to",
        choices=["paddle", "torch"],
        help="direction; default: torch when DST is .pth/.pt, else paddle. torch turns "
        "Paddle weights back into timm's layout (.pth, or .safetensors)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="cast the weights (default: keep the source dtype)",
    )
    p.add_argument("--allow-nonfinite", action="store_true", help="convert tensors holding NaN/Inf")
    p.add_argument(
        "--verify",
        action="store_true",
        help="run timm's model on SRC and the Paddle model on DST and compare every "
        "scale, the features and the logits (needs torch and timm); exit 1 if "
        "they differ",
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    return p.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from converter.pipeline import convert_checkpoint

    if args.verify:
        try:
            import timm  # noqa: F401

            from reference.parity import verify_conversion
        except ImportError as e:
            return fail(f"--verify needs torch and timm ({e}): {install_hint('reference')}")
    result = convert_checkpoint(
        args.src,
        args.dst,
        variant=args.variant,
        force=args.force,
        ema=args.ema,
        allow_nonfinite=args.allow_nonfinite,
        dtype=args.dtype,
        to=args.to,
        hash_source=args.json,
    )
    report = result.to_dict()
    if not args.json:
        print(result.summary())
    code = 0
    if args.verify:
        to_torch = args.to == "torch" or (args.to is None and args.dst.endswith((".pth", ".pt")))
        torch_file, paddle_file = (args.dst, args.src) if to_torch else (args.src, args.dst)
        parity = verify_conversion(torch_file, paddle_file, result.variant, ema=args.ema)
        report["parity"] = parity.to_dict()
        if not args.json:
            print(parity.table())
        code = 0 if parity.ok else 1
    if args.json:
        print(json.dumps(report, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
