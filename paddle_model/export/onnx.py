"""ONNX from a saved Paddle model: paddle2onnx, the repairs its output needs, the onnxruntime check.

paddle2onnx's file is mended before it is written: the Pad nodes get their fill values from the
program (:func:`repair_pad_values`) and the initializers no node uses are dropped
(:func:`drop_unused_initializers`; onnxruntime prints a warning for each one otherwise).
:func:`check_onnx` loads the file as a user would, with onnxruntime's default logging, and refuses
a file that makes it warn.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from converter.extras import install_hint

from ..errors import CoatError
from ..variants import get_variant
from .capture import sorted_stderr
from .paddle import uses_kernels

ONNX_PACKAGES = ("paddle2onnx", "onnx", "onnxruntime")
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-5  # max |onnxruntime - eager| / max |eager|, over the logits
ONNX_CHECK_SIZE = (230, 200)  # besides the variant's own: not a multiple of 32, not square
# onnxruntime's default logger: "... [W:onnxruntime:, graph.cc:...] message" (W, E or F)
_ORT_LOG = re.compile(r"\[[WEF]:onnxruntime")


def require_onnx() -> None:
    """Raise one line naming what to install when the ONNX packages are missing."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CoatError(f"--onnx needs {', '.join(missing)}, not installed here: {install_hint('onnx')}")


def export_onnx(prefix: str | Path, out: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Convert the portable model saved at ``prefix`` to ``out`` with paddle2onnx, then mend it.

    The input keeps the saved graph's dynamic batch, height and width. paddle2onnx's own graph
    optimisation runs; its optional third-party passes do not (``optimize_tool="None"``: the
    polygraphy pass would try to pip-install a package). ``out`` is written in place: give a
    staging path (:class:`.files.Staging`).
    """
    import onnx
    import paddle2onnx

    if uses_kernels(prefix):
        raise CoatError(
            f"{prefix}.json holds compiled kernels, which ONNX cannot express; export "
            "without --kernels for --onnx"
        )
    try:
        serialized = paddle2onnx.export(  # no file: the model comes back as bytes
            f"{prefix}.json",
            f"{prefix}.pdiparams",
            None,
            opset_version=opset,
            auto_upgrade_opset=False,
            optimize_tool="None",
        )
        if not serialized:
            raise CoatError(f"paddle2onnx gave no model for {prefix}.json (see its log above)")
        model = onnx.load_from_string(serialized)
    except CoatError:
        raise
    except (Exception, SystemExit) as e:  # paddle2onnx logs some failures, then calls sys.exit
        raise CoatError(f"paddle2onnx could not convert {prefix}.json ({type(e).__name__}: {e})") from None
    repair_pad_values(model, Path(f"{prefix}.json"))
    drop_unused_initializers(model)
    try:
        onnx.save(model, str(out))
    except OSError as e:  # a failed write names no file
        raise OSError(e.errno, e.strerror, str(out)) from None
    return Path(out)


# a pad3d op's attribute in a Paddle 3 .json program: {"AT":{"#":"0.a_f64","D":0.0},"N":"pad_value"}
_PAD_VALUE = re.compile(r'\{"AT":\{"#":"0\.a_f(?:32|64)","D":([^}]*)\},"N":"pad_value"\}')


def repair_pad_values(model, program: Path) -> None:
    """Give the ONNX Pad nodes of ``model`` (an onnx ModelProto, changed in place) the fill values
    of the program's pad3d ops, in order.

    Paddle 3.3 stores pad3d's ``pad_value`` as a double (PaddlePaddle/Paddle#75970); paddle2onnx
    2.1 still reads a float, so each Pad node's constant value is whatever that memory held
    (0 or 1e25 from one conversion to the next: CoaT's crpe pads a zero row for the CLS token).
    Where the Pad nodes and the pad3d ops cannot be paired one to one this raises instead.
    """
    import numpy as np
    from onnx import numpy_helper

    values = [float(v) for v in _PAD_VALUE.findall(program.read_text(errors="replace"))]
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
                f"{program}: the fill value of Pad node {node.name} is computed, not a "
                "constant; cannot set it"
            )


def drop_unused_initializers(model) -> int:
    """Remove from ``model`` (changed in place) the constants no output depends on: the nodes
    whose results nothing reads (paddle2onnx leaves weights as ``Constant`` nodes that
    onnxruntime turns into initializers, then warns about each unused one) and the initializers
    no remaining node reads, with their graph inputs and value infos. Returns how many went.

    ONNX lists nodes in topological order, so one backward pass finds every live node (onnx's
    ``utils.Extractor`` does the same search per name, quadratic in the graph's size).
    """
    graph = model.graph
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(name for inner in _nodes_within(node) for name in inner.input)
    dead_nodes = len(graph.node) - len(live)
    if dead_nodes:
        live.reverse()
        del graph.node[:]
        graph.node.extend(live)
    gone = {t.name for t in graph.initializer if t.name not in needed}
    for field in (graph.initializer, graph.input, graph.value_info):
        kept = [entry for entry in field if entry.name not in gone]
        if len(kept) != len(field):
            del field[:]
            field.extend(kept)
    return dead_nodes + len(gone)


def _nodes_within(node):
    """``node`` and the nodes of the subgraphs it holds (If, Loop, Scan), which may read names
    of the graph around them."""
    yield node
    for attribute in node.attribute:
        for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in sub.node:
                yield from _nodes_within(inner)


def check_onnx(path: str | Path, eager, sizes: list[tuple[int, int, int]]) -> list[tuple[list[int], float]]:
    """Run the ONNX model at ``path`` in onnxruntime and the ``eager`` Paddle model on seeded
    inputs of each (batch, height, width); per input its shape and max |d| / max |eager|.

    The session is made with onnxruntime's default logging, as a user's is; a warning or error
    it logs while loading the file raises CoatError.
    """
    import numpy as np
    import onnxruntime
    import paddle

    with sorted_stderr(_ORT_LOG) as logged:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if logged:
        raise CoatError(f"{path}: onnxruntime warns when loading it ({len(logged)} lines): {logged[0]}")
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
    variant: str, static, prefix: str | Path, out: str | Path
) -> tuple[Path, list[tuple[list[int], float]]]:
    """``out`` from the model just saved at ``prefix``, checked against an eager model with the
    same parameters as ``static`` (the traced layer) at the variant's size and 230x200."""
    from ..coat import CoaT
    from ..weights import load_state_dict

    path = export_onnx(prefix, out)
    state = {k: v.numpy() for k, v in static.state_dict().items()}
    classes = int(state["head.weight"].shape[1]) if "head.weight" in state else 0  # [in, out]
    eager = CoaT(get_variant(variant), num_classes=classes)
    load_state_dict(eager, state, source=str(prefix))
    side = get_variant(variant).img_size
    return path, check_onnx(path, eager, [(2, side, side), (1, *ONNX_CHECK_SIZE)])
