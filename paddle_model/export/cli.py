"""``python -m paddle_model.export`` (``coat-export``): parse, export, say what was written."""

from __future__ import annotations

from pathlib import Path

from converter.cli import ArgumentParser, command, fail

from ..errors import CoatError
from ..hub import WEIGHTS_HELP
from ..variants import VARIANTS
from .files import Staging
from .onnx import ONNX_OPSET, ONNX_TOLERANCE, export_and_check_onnx, require_onnx
from .paddle import SUFFIXES, build, check_size, save


@command
def main(argv: list[str] | None = None) -> int:
    """Export one variant; exit 0 when written, 1 when the ONNX check fails (the Paddle files
    are written, the .onnx is not), 2 on bad input (nothing written)."""
    p = ArgumentParser(
        prog="python -m paddle_model.export",
        description="Export a CoaT for deployment: a paddle.jit.save model for Paddle Inference.",
    )
    p.add_argument("variant", choices=list(VARIANTS))
    p.add_argument(
        "prefix", type=Path, help="output path prefix (without suffix); missing folders are created"
    )
    p.add_argument("--weights", help=f"{WEIGHTS_HELP} (default: random init)")
    p.add_argument(
        "--kernels",
        action="store_true",
        help="use the compiled ops in the graph (faster on CPU; fixed input size; the "
        "model then loads through paddle_model.export.create_predictor)",
    )
    p.add_argument(
        "--size",
        type=int,
        help="input height and width of a --kernels export (default: the variant's; at least 32)",
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write PREFIX.onnx (paddle2onnx) and check it in onnxruntime against the "
        "eager model; needs the onnx extra",
    )
    p.add_argument("--force", action="store_true", help="replace existing output files")
    args = p.parse_args(argv)
    side = check_size(args.variant, args.kernels, args.size)
    if args.onnx:
        if args.kernels:
            raise CoatError(
                "--onnx needs the portable export: the compiled kernels of --kernels are not ONNX operators"
            )
        require_onnx()
    from ..hub import resolve_cli_weights

    weights = resolve_cli_weights(args.variant, args.weights)
    suffixes = SUFFIXES + ((".onnx",) if args.onnx else ())
    model = build(args.variant, weights, args.kernels)
    checks = None
    with Staging(args.prefix, suffixes, args.force) as stage:
        static = save(model, stage, side)
        if args.onnx:
            _, checks = export_and_check_onnx(args.variant, static, stage.staged_prefix, stage.path(".onnx"))
        at_parity = checks is None or max(rel for _, rel in checks) <= ONNX_TOLERANCE
        stage.publish(suffixes if at_parity else SUFFIXES)
    if args.kernels:
        shape = f"float32 [N, 3, {side}, {side}], any N; load with paddle_model.export.create_predictor"
    else:
        shape = "float32 [N, 3, H, W], any N, H, W"
    print(f"exported {args.variant} to {args.prefix}.json / {args.prefix}.pdiparams (input: {shape})")
    if checks is not None:
        return report_onnx(Path(f"{args.prefix}.onnx"), checks)
    return 0


def report_onnx(path: Path, checks: list[tuple[list[int], float]]) -> int:
    """Print the onnxruntime check; 0 at parity, else one error line and 1 (``path`` is then
    not written)."""
    for shape, rel in checks:
        print(f"onnxruntime vs eager Paddle, input {shape}: logits max|d|/max|ref| {rel:.2e}")
    worst_shape, worst = max(checks, key=lambda c: c[1])
    if not worst <= ONNX_TOLERANCE:
        return fail(
            f"{path} differs from the eager model by {worst:.2e} of the largest logit at input "
            f"{worst_shape} (tolerance {ONNX_TOLERANCE:.0e}); it was not written",
            1,
        )
    print(
        f"exported {path} (opset {ONNX_OPSET}, input float32 [N, 3, H, W]; at parity within "
        f"{ONNX_TOLERANCE:.0e})"
    )
    return 0
