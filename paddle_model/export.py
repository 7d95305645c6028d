"""Export a CoaT for deployment: a ``paddle.jit.save`` model for Paddle Inference.

    python -m paddle_model.export coat_lite_small --weights coat_lite_small.pdparams out/coat_lite_small

writes ``out/coat_lite_small.json`` and ``.pdiparams`` (Paddle Inference, ``paddle.jit.load``),
with dynamic batch, height and width and Paddle's own ops only. ``--kernels`` puts the compiled
attention, cpe, LayerNorm, Linear, MLP, patch embedding and resampling ops of
:mod:`paddle_model.kernels` into the graph instead, for a fixed input size (``--size``, default
the variant's); such a model runs only where those ops are built and registered, which
:func:`create_predictor` does.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

from .errors import CoatError
from .kernels import OPS
from .variants import VARIANTS, get_variant


def export(variant: str, weights: str | Path | None, prefix: str | Path, kernels: bool = False,
           size: int | None = None):
    """Trace ``variant`` (with ``weights``) to a static graph and save it at ``prefix``.

    The input is float32 [N, 3, H, W]: any N, H, W; with ``kernels``, H = W = ``size`` (default
    the variant's image size) and the graph uses the compiled ops.
    """
    import paddle

    from . import kernels as compiled
    from .factory import create_model
    from .kernels import fast

    if kernels and not compiled.available():
        raise CoatError("the compiled kernels are not available here (see the warning above, or "
                        "COAT_PADDLE_KERNELS=0); export without --kernels")
    if size is not None and not kernels:
        raise CoatError("--size fixes the input size of a --kernels export; without --kernels the "
                        "exported model takes any size")
    model = create_model(variant, pretrained=weights)
    model.eval()
    side = (size or get_variant(variant).img_size) if kernels else None
    spec = [paddle.static.InputSpec([None, 3, side, side], "float32", name="image")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    with fast.swapped(model) if kernels else contextlib.nullcontext():
        paddle.jit.save(static, str(prefix))
    return static


def kernel_ops(prefix: str | Path) -> list[str]:
    """The compiled ops that the model saved at ``prefix`` uses (none unless exported with
    ``kernels=True``)."""
    text = Path(f"{prefix}.json").read_text(errors="replace")
    return [name for name in OPS if f'.{name}"' in text]  # PIR names ops "<dialect>.<op>"


def uses_kernels(prefix: str | Path) -> bool:
    """Whether the model saved at ``prefix`` was exported with ``kernels=True``."""
    return bool(kernel_ops(prefix))


def create_predictor(prefix: str | Path, threads: int = 1):
    """A Paddle Inference predictor on the CPU (oneDNN) for the model exported at ``prefix``.

    For a model exported with kernels, the compiled ops are built if needed and registered in
    this process first; where they cannot be, this raises CoatError rather than Paddle's
    unknown-operator error.
    """
    from paddle import inference

    from . import kernels as compiled

    for suffix in (".json", ".pdiparams"):
        if not Path(f"{prefix}{suffix}").is_file():
            raise CoatError(f"{prefix}{suffix}: no such file; export the model first "
                            "(python -m paddle_model.export)")
    used = kernel_ops(prefix)
    if used and not compiled.available():
        raise CoatError(f"{prefix}.json was exported with --kernels, and the compiled kernels are "
                        "not available here; export it again without --kernels")
    missing = [name for name in used if not compiled.has_op(name)]
    if missing:  # coat_linear needs the MKL of an x86 Paddle build
        raise CoatError(f"{prefix}.json uses {', '.join(missing)}, which this Paddle build cannot "
                        "provide (no MKL in its wheel); export it again here")
    config = inference.Config(f"{prefix}.json", f"{prefix}.pdiparams")
    config.disable_gpu()
    config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    return inference.create_predictor(config)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paddle_model.export", description=__doc__.split("\n")[0])
    p.add_argument("variant", choices=list(VARIANTS))
    p.add_argument("prefix", type=Path, help="output path prefix (without suffix)")
    p.add_argument("--weights", type=Path, help=".pdparams or .safetensors (default: random init)")
    p.add_argument("--kernels", action="store_true",
                   help="use the compiled ops in the graph (faster on CPU; fixed input size; the "
                        "model then loads through paddle_model.export.create_predictor)")
    p.add_argument("--size", type=int, help="input height and width of a --kernels export "
                                            "(default: the variant's)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")
    if not args.prefix.parent.is_dir():
        print(f"error: {args.prefix.parent}: no such directory; create it first", file=sys.stderr)
        return 2
    try:
        export(args.variant, args.weights, args.prefix, kernels=args.kernels, size=args.size)
    except CoatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.kernels:
        side = args.size or get_variant(args.variant).img_size
        shape = f"float32 [N, 3, {side}, {side}], any N; load with paddle_model.export.create_predictor"
    else:
        shape = "float32 [N, 3, H, W], any N, H, W"
    print(f"exported {args.variant} to {args.prefix}.json / {args.prefix}.pdiparams (input: {shape})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
