"""Export a CoaT for deployment: a ``paddle.jit.save`` model with dynamic batch, height and width.

    python -m paddle_model.export coat_lite_small --weights coat_lite_small.pdparams out/coat_lite_small

writes ``out/coat_lite_small.json`` and ``.pdiparams`` (Paddle Inference, ``paddle.jit.load``).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .errors import CoatError
from .variants import VARIANTS


def export(variant: str, weights: str | Path | None, prefix: str | Path):
    """Trace ``variant`` (with ``weights``) to a static graph with input [N, 3, H, W] and save it."""
    import paddle

    from .factory import create_model

    model = create_model(variant, pretrained=weights)
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, None, None], "float32", name="image")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(prefix))
    return static


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paddle_model.export", description=__doc__.split("\n")[0])
    p.add_argument("variant", choices=list(VARIANTS))
    p.add_argument("prefix", type=Path, help="output path prefix (without suffix)")
    p.add_argument("--weights", type=Path, help=".pdparams or .safetensors (default: random init)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")
    if not args.prefix.parent.is_dir():
        print(f"error: {args.prefix.parent}: no such directory; create it first", file=sys.stderr)
        return 2
    try:
        export(args.variant, args.weights, args.prefix)
    except CoatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.variant} to {args.prefix}.json / {args.prefix}.pdiparams "
          "(input: float32 [N, 3, H, W], any N, H, W)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
