"""``export --onnx``: paddle2onnx's model in onnxruntime gives the eager Paddle model's logits."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import paddle
import pytest

import paddle_model
from paddle_model import export as export_module
from paddle_model.export.cli import report_onnx

from .conftest import RELEASED_VARIANTS, ROOT, run_module


@pytest.fixture(scope="module")
def onnx_exports(converted, tmp_path_factory):
    """``python -m paddle_model.export V PREFIX --weights W --onnx`` for a CoaT and a CoaT-Lite."""
    root = tmp_path_factory.mktemp("onnx")
    done = {}
    for name in RELEASED_VARIANTS:
        _, weights = converted(name)
        prefix = root / name
        done[name] = (
            prefix,
            weights,
            run_module("paddle_model.export", name, prefix, "--weights", weights, "--onnx"),
        )
    return done


@pytest.mark.parametrize("name", RELEASED_VARIANTS)
def test_export_onnx_is_at_parity_with_the_eager_model(onnx_exports, name):
    prefix, weights, result = onnx_exports[name]
    assert result.returncode == 0, result.stderr
    checked = re.findall(r"input \[(\d+), 3, (\d+), (\d+)\]: logits max\|d\|/max\|ref\| (\S+)", result.stdout)
    side = paddle_model.get_variant(name).img_size
    assert [c[:3] for c in checked] == [("2", str(side), str(side)), ("1", "230", "200")]
    assert all(0 < float(c[3]) <= 1e-5 for c in checked)

    graph = onnx.load(f"{prefix}.onnx").graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or None for d in dims] == [None, 3, None, None]  # batch, height, width dynamic
    assert all(dims[i].dim_param for i in (0, 2, 3))

    # a size and batch the command did not check, against the eager model from the weights file
    eager = paddle_model.create_model(name, pretrained=weights)
    [(shape, rel)] = export_module.check_onnx(f"{prefix}.onnx", eager, [(3, 160, 288)])
    assert shape == [3, 3, 160, 288] and rel <= 1e-5


def test_the_onnx_check_fails_a_model_that_differs(onnx_exports, tmp_path):
    """Against other weights the check reports a large difference; the command then exits 1 (and
    writes no .onnx: tests/test_export.py)."""
    prefix, _, _ = onnx_exports["coat_lite_tiny"]
    paddle.seed(1)
    other = paddle_model.create_model("coat_lite_tiny")  # random weights, not the exported ones
    [(_, rel)] = export_module.check_onnx(f"{prefix}.onnx", other, [(1, 96, 96)])
    assert rel > 1e-2
    assert report_onnx(tmp_path / "model.onnx", [([1, 3, 96, 96], rel)]) == 1


def test_onnx_without_its_packages_says_what_to_install(tmp_path):
    code = (
        "import sys\nsys.modules['onnxruntime'] = None  # as if not installed\n"
        "from paddle_model.export import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "coat_lite_tiny", str(tmp_path / "m"), "--onnx"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --onnx needs onnxruntime, not installed here: "
        "pip install paddle2onnx==2.1.0 'onnx<=1.17.0,>=1.16' 'onnxruntime>=1.17'"
    )
    assert list(tmp_path.iterdir()) == []
    result = run_module("paddle_model.export", "coat_lite_tiny", tmp_path / "m", "--onnx", "--kernels")
    assert result.returncode == 2 and "--onnx needs the portable export" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _pad_fills(model) -> list[float]:
    from onnx import numpy_helper

    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    return [
        float(numpy_helper.to_array(constants[n.input[2]].attribute[0].t))
        for n in model.graph.node
        if n.op_type == "Pad"
    ]


def test_pad_fill_values_are_repaired_from_the_program(onnx_exports, tmp_path):
    """paddle2onnx 2.1 reads pad3d's pad_value (a double since Paddle 3.3) as a float, leaving
    whatever memory held; the export sets each Pad from its pad3d op: the crpe's zero CLS row."""
    from onnx import numpy_helper

    prefix, weights, _ = onnx_exports["coat_tiny"]
    model = onnx.load(f"{prefix}.onnx")
    depth = paddle_model.get_variant("coat_tiny")
    assert _pad_fills(model) == [0.0] * (sum(depth.serial_depths) + 3 * depth.parallel_depth)
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for node in (n for n in model.graph.node if n.op_type == "Pad"):  # as a bad conversion leaves them
        t = constants[node.input[2]].attribute[0].t
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(1e25), t.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    eager = paddle_model.create_model("coat_tiny", pretrained=weights)
    [(_, rel)] = export_module.check_onnx(broken, eager, [(1, 96, 96)])
    assert rel > 1e-2
    repaired = onnx.load(str(broken))
    export_module.repair_pad_values(repaired, prefix.with_suffix(".json"))
    onnx.save(repaired, str(broken))
    assert _pad_fills(onnx.load(str(broken))) == _pad_fills(onnx.load(f"{prefix}.onnx"))
    [(_, rel)] = export_module.check_onnx(broken, eager, [(1, 96, 96)])
    assert rel <= 1e-5
