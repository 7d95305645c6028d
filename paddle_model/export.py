"""Export a CoaT for deployment: a ``paddle.jit.save`` model for Paddle Inference.

    python -m paddle_model.export coat_lite_small --weights coat_lite_small.pdparams out/coat_lite_small

writes ``out/coat_lite_small.json`` and ``.pdiparams`` (Paddle Inference, ``paddle.jit.load``),
with dynamic batch, height and width and Paddle's own ops only. ``--kernels`` puts the compiled
attention, cpe, LayerNorm, Linear, MLP, patch embedding and resampling ops of
:mod:`paddle_model.kernels` into the graph instead, for a fixed input size (``--size``, default
the variant's); such a model runs only where those ops are built and registered, which
:func:`create_predictor` does. ``--onnx`` also writes ``out/coat_lite_small.onnx`` through
paddle2onnx (dynamic batch, height and width) and checks it in onnxruntime against the eager
model on seeded inputs; above 1e-5 of the largest logit the file is removed and the exit code 1.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from pathlib import Path

from converter.cli import ArgumentParser, command, fail

from .errors import CoatError
from .hub import WEIGHTS_HELP
from .kernels import OPS
from .variants import VARIANTS, get_variant

ONNX_PACKAGES = ("paddle2onnx", "onnx", "onnxruntime")
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-5  # max |onnxruntime - eager| / max |eager|, over the logits
ONNX_CHECK_SIZE = (230, 200)  # besides the variant's own: not a multiple of 32, not square


def export(
    variant: str,
    weights: str | Path | None,
    prefix: str | Path,
    kernels: bool = False,
    size: int | None = None,
):
    """Trace ``variant`` (with ``weights``) to a static graph and save it at ``prefix``.

    The input is float32 [N, 3, H, W]: any N, H, W; with ``kernels``, H = W = ``size`` (default
    the variant's image size) and the graph uses the compiled ops.
    """
    import paddle

    from . import kernels as compiled
    from .factory import create_model
    from .kernels import fast

    if kernels and not compiled.available():
        raise CoatError(
            "the compiled kernels are not available here (see the warning above, or "
            "COAT_PADDLE_KERNELS=0); export without --kernels"
        )
    if size is not None and not kernels:
        raise CoatError(
            "--size fixes the input size of a --kernels export; without --kernels the "
            "exported model takes any size"
        )
    model = create_model(variant, pretrained=weights, kernels=kernels)
    if kernels:
        fast.trace_compiled(model)  # the traced graph holds the compiled ops
    model.eval()
    side = (size or get_variant(variant).img_size) if kernels else None
    spec = [paddle.static.InputSpec([None, 3, side, side], "float32", name="image")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(prefix))
    return static


def require_onnx() -> None:
    """Raise one line naming what to install when the ONNX packages are missing."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CoatError(
            f"--onnx needs {', '.join(missing)}, not installed here: pip install "
            "'coat-paddle[onnx]' (paddle2onnx, onnx <= 1.17, onnxruntime)"
        )


def export_onnx(prefix: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Convert the portable model saved at ``prefix`` to ``prefix.onnx`` with paddle2onnx.

    The input keeps the saved graph's dynamic batch, height and width. paddle2onnx's own graph
    optimisation runs; its optional third-party passes do not (``optimize_tool="None"``: the
    polygraphy pass would try to pip-install a package). Written through a temporary file.
    """
    import paddle2onnx

    if uses_kernels(prefix):
        raise CoatError(
            f"{prefix}.json holds compiled kernels, which ONNX cannot express; export "
            "without --kernels for --onnx"
        )
    out = Path(f"{prefix}.onnx")
    tmp = out.with_name(f".{out.name}.part")
    try:
        paddle2onnx.export(
            f"{prefix}.json",
            f"{prefix}.pdiparams",
            str(tmp),
            opset_version=opset,
            auto_upgrade_opset=False,
            optimize_tool="None",
        )
        if not tmp.is_file():
            raise CoatError(f"paddle2onnx wrote no model for {prefix}.json (see its log above)")
        _repair_pad_values(tmp, Path(f"{prefix}.json"))
        os.replace(tmp, out)
    except Exception as e:  # paddle2onnx logs its failures and then fails on an unbound name
        if isinstance(e, CoatError):
            raise
        raise CoatError(f"paddle2onnx could not convert {prefix}.json ({type(e).__name__}: {e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


# a pad3d op's attribute in a Paddle 3 .json program: {"AT":{"#":"0.a_f64","D":0.0},"N":"pad_value"}
_PAD_VALUE = re.compile(r'\{"AT":\{"#":"0\.a_f(?:32|64)","D":([^}]*)\},"N":"pad_value"\}')


def _repair_pad_values(model_path: Path, program: Path) -> None:
    """Give the ONNX Pad nodes the fill values of the program's pad3d ops, in order.

    Paddle 3.3 stores pad3d's ``pad_value`` as a double (PaddlePaddle/Paddle#75970); paddle2onnx
    2.1 still reads a float, so each Pad node's constant value is whatever that memory held
    (0 or 1e25 from one conversion to the next: CoaT's crpe pads a zero row for the CLS token).
    Where the Pad nodes and the pad3d ops cannot be paired one to one this raises instead.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    values = [float(v) for v in _PAD_VALUE.findall(program.read_text(errors="replace"))]
    model = onnx.load(str(model_path))
    graph = model.graph
    pads = [n for n in graph.node if n.op_type == "Pad"]
    if not pads and not values:
        return
    modes = [next((a.s for a in n.attribute if a.name == "mode"), b"constant") for n in pads]
    paired = len(pads) == len(values) and all(len(n.input) >= 3 for n in pads)
    if not paired or any(mode != b"constant" for mode in modes):
        raise CoatError(
            f"{program}: its {len(values)} pad3d ops do not pair with the {len(pads)} Pad nodes "
            "paddle2onnx wrote; cannot give them their fill values"
        )
    producers = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    initializers = {t.name: t for t in graph.initializer}
    for node, value in zip(pads, values):
        name = node.input[2]
        if name in producers:
            attribute = next(a for a in producers[name].attribute if a.name == "value")
            old = numpy_helper.to_array(attribute.t)
            attribute.t.CopyFrom(numpy_helper.from_array(np.full_like(old, value), attribute.t.name))
        elif name in initializers:
            old = numpy_helper.to_array(initializers[name])
            initializers[name].CopyFrom(numpy_helper.from_array(np.full_like(old, value), name))
        else:
            raise CoatError(
                f"{model_path}: the fill value of Pad node {node.name} is computed, not a "
                "constant; cannot set it"
            )
    onnx.save(model, str(model_path))


def check_onnx(path: str | Path, eager, sizes: list[tuple[int, int, int]]) -> list[tuple[list[int], float]]:
    """Run the ONNX model at ``path`` in onnxruntime and the ``eager`` Paddle model on seeded
    inputs of each (batch, height, width); per input its shape and max |d| / max |eager|."""
    import numpy as np
    import onnxruntime
    import paddle

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: not a line per initializer paddle2onnx left unused
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    eager.eval()
    results = []
    for seed, (batch, height, width) in enumerate(sizes):
        x = np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)
        got = session.run(None, {name: x})[0]
        with paddle.no_grad():
            expected = eager(paddle.to_tensor(x)).numpy()
        if got.shape != expected.shape:
            raise CoatError(
                f"{path}: gives shape {list(got.shape)} for {list(x.shape)}, the eager "
                f"model {list(expected.shape)}"
            )
        rel = float(np.abs(got - expected).max()) / max(float(np.abs(expected).max()), 1e-30)
        results.append((list(x.shape), rel))
    return results


def export_and_check_onnx(
    variant: str, static, prefix: str | Path
) -> tuple[Path, list[tuple[list[int], float]]]:
    """``prefix.onnx`` from the model just saved at ``prefix``, checked against an eager model with
    the same parameters as ``static`` (the traced layer) at the variant's size and 230x200."""
    from .coat import CoaT
    from .weights import load_state_dict

    path = export_onnx(prefix)
    eager = CoaT(get_variant(variant))
    load_state_dict(eager, {k: v.numpy() for k, v in static.state_dict().items()}, source=str(prefix))
    side = get_variant(variant).img_size
    return path, check_onnx(path, eager, [(2, side, side), (1, *ONNX_CHECK_SIZE)])


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
            raise CoatError(
                f"{prefix}{suffix}: no such file; export the model first (python -m paddle_model.export)"
            )
    used = kernel_ops(prefix)
    if used and not compiled.available():
        raise CoatError(
            f"{prefix}.json was exported with --kernels, and the compiled kernels are "
            "not available here; export it again without --kernels"
        )
    missing = [name for name in used if not compiled.has_op(name)]
    if missing:  # coat_linear needs the MKL of an x86 Paddle build
        raise CoatError(
            f"{prefix}.json uses {', '.join(missing)}, which this Paddle build cannot "
            "provide (no MKL in its wheel); export it again here"
        )
    config = inference.Config(f"{prefix}.json", f"{prefix}.pdiparams")
    config.disable_gpu()
    config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    return inference.create_predictor(config)


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m paddle_model.export", description=__doc__.split("\n")[0])
    p.add_argument("variant", choices=list(VARIANTS))
    p.add_argument("prefix", type=Path, help="output path prefix (without suffix)")
    p.add_argument(
        "--weights",
        help=f"{WEIGHTS_HELP} (default: random init)",
    )
    p.add_argument(
        "--kernels",
        action="store_true",
        help="use the compiled ops in the graph (faster on CPU; fixed input size; the "
        "model then loads through paddle_model.export.create_predictor)",
    )
    p.add_argument(
        "--size", type=int, help="input height and width of a --kernels export (default: the variant's)"
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write PREFIX.onnx (paddle2onnx) and check it in onnxruntime against the "
        "eager model; needs the onnx extra",
    )
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")
    if not args.prefix.parent.is_dir():
        raise CoatError(f"{args.prefix.parent}: no such directory; create it first")
    if args.onnx:
        if args.kernels:
            raise CoatError(
                "--onnx needs the portable export: the compiled kernels of --kernels are not ONNX operators"
            )
        require_onnx()
    from .hub import resolve_cli_weights

    weights = resolve_cli_weights(args.variant, args.weights)
    static = export(args.variant, weights, args.prefix, kernels=args.kernels, size=args.size)
    if args.onnx:
        onnx_path, checks = export_and_check_onnx(args.variant, static, args.prefix)
    if args.kernels:
        side = args.size or get_variant(args.variant).img_size
        shape = f"float32 [N, 3, {side}, {side}], any N; load with paddle_model.export.create_predictor"
    else:
        shape = "float32 [N, 3, H, W], any N, H, W"
    print(f"exported {args.variant} to {args.prefix}.json / {args.prefix}.pdiparams (input: {shape})")
    if args.onnx:
        return _report_onnx(onnx_path, checks)
    return 0


def _report_onnx(path: Path, checks: list[tuple[list[int], float]]) -> int:
    for shape, rel in checks:
        print(f"onnxruntime vs eager Paddle, input {shape}: logits max|d|/max|ref| {rel:.2e}")
    worst_shape, worst = max(checks, key=lambda c: c[1])
    if not worst <= ONNX_TOLERANCE:
        path.unlink()
        return fail(
            f"{path} differs from the eager model by {worst:.2e} of the largest logit at input "
            f"{worst_shape} (tolerance {ONNX_TOLERANCE:.0e}); it was removed",
            1,
        )
    print(
        f"exported {path} (opset {ONNX_OPSET}, input float32 [N, 3, H, W]; at parity within "
        f"{ONNX_TOLERANCE:.0e})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
