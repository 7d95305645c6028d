"""``python -m paddle_model.export``: where it writes, what it prints, what the ONNX file holds."""

from __future__ import annotations

import os

import numpy as np
import onnx
import paddle
import pytest

import paddle_model
from paddle_model import export as export_module
from paddle_model.errors import CoatError

from .conftest import run_module, run_python

VARIANT = "coat_lite_tiny"
ORT_LOAD = (  # a user's first load: onnxruntime's default logging, its stderr captured
    "import sys, onnxruntime\nonnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A seeded random ``coat_lite_tiny`` saved with ``paddle.save``, as a user's fine-tune is."""
    path = tmp_path_factory.mktemp("weights") / f"{VARIANT}.pdparams"
    paddle.seed(3)
    paddle.save(paddle_model.create_model(VARIANT).state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def onnx_export(weights, tmp_path_factory):
    """``export VARIANT PREFIX --weights W --onnx``: (prefix, finished process)."""
    prefix = tmp_path_factory.mktemp("onnx") / VARIANT
    return prefix, run_module("paddle_model.export", VARIANT, prefix, "--weights", weights, "--onnx")


def _raw_onnx(prefix, path) -> None:
    """The file paddle2onnx writes for the export at ``prefix``, as the export calls it (no
    third-party passes: the polygraphy pass would try to pip-install a package)."""
    import paddle2onnx

    paddle2onnx.export(
        f"{prefix}.json", f"{prefix}.pdiparams", str(path), opset_version=17, optimize_tool="None"
    )


def _eager(weights):
    model = paddle_model.create_model(VARIANT, pretrained=weights)
    model.eval()
    return model


def test_missing_parent_folders_are_created(weights, tmp_path):
    prefix = tmp_path / "deploy" / "a" / VARIANT
    result = run_module("paddle_model.export", VARIANT, prefix, "--weights", weights)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(prefix.parent)) == [f"{VARIANT}.json", f"{VARIANT}.pdiparams"]  # no temp left
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    with paddle.no_grad():
        expected = _eager(weights)(x).numpy()
        got = paddle.jit.load(str(prefix))(x).numpy()
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-5 * float(np.abs(expected).max())


def test_export_prints_one_line_and_no_paddle_tracing_warning(weights, tmp_path):
    """Paddle 3.3 logs 'PIR not support input out tensor' (C++) while tracing: not the user's."""
    result = run_module("paddle_model.export", VARIANT, tmp_path / "m", "--weights", weights)
    assert result.returncode == 0, result.stderr
    assert "not support input out tensor" not in result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"exported {VARIANT} to {tmp_path / 'm'}.json / {tmp_path / 'm'}.pdiparams "
        "(input: float32 [N, 3, H, W], any N, H, W)"
    ]


def test_the_tracing_warning_filter_keeps_other_stderr_lines(tmp_path):
    """Only the one Paddle line is dropped: anything else printed at the C level stays."""
    code = (
        "import os, re\nfrom paddle_model.export.capture import sorted_stderr\n"
        "with sorted_stderr(re.compile('not support input out tensor')) as dropped:\n"
        "    os.write(2, b'W1204 eager_utils.cc] PIR not support input out tensor for now!!\\n')\n"
        "    os.write(2, b'a real error\\n')\n"
        "print(dropped)\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "a real error\n"
    assert result.stdout.strip() == "['W1204 eager_utils.cc] PIR not support input out tensor for now!!']"


def test_an_existing_export_is_kept_unless_forced(weights, tmp_path):
    prefix = tmp_path / "m"
    (tmp_path / "m.pdiparams").write_bytes(b"mine")
    result = run_module("paddle_model.export", VARIANT, prefix, "--weights", weights)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {prefix}.pdiparams: already exists; pass --force to overwrite it"
    ]
    assert sorted(os.listdir(tmp_path)) == ["m.pdiparams"]
    assert (tmp_path / "m.pdiparams").read_bytes() == b"mine"

    result = run_module("paddle_model.export", VARIANT, prefix, "--weights", weights, "--force")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.pdiparams"]
    assert len(paddle.jit.load(str(prefix)).state_dict()) > 0


def test_the_api_export_writes_complete_files_and_refuses_small_sizes(weights, tmp_path):
    static = export_module.export(VARIANT, weights, tmp_path / "sub" / "m")
    assert static is not None
    assert sorted(os.listdir(tmp_path / "sub")) == ["m.json", "m.pdiparams"]
    with pytest.raises(CoatError, match="already exists"):
        export_module.export(VARIANT, weights, tmp_path / "sub" / "m")
    with pytest.raises(CoatError, match="at least 32x32 pixels"):
        export_module.export(VARIANT, weights, tmp_path / "small", kernels=True, size=31)
    assert sorted(os.listdir(tmp_path)) == ["sub"]


def test_every_variants_minimum_input_is_32_pixels():
    """Patch 4, then three 2x2 patch embeddings: the last stage has one token per side at 32."""
    assert {v.min_input_size for v in paddle_model.VARIANTS.values()} == {32}


def test_a_kernels_export_at_the_minimum_size_works(weights, tmp_path):
    result = run_module(
        "paddle_model.export", VARIANT, tmp_path / "m", "--weights", weights, "--kernels", "--size", 32
    )
    assert result.returncode == 0, result.stderr
    assert "[N, 3, 32, 32]" in result.stdout
    assert export_module.uses_kernels(tmp_path / "m")


def test_the_onnx_file_has_no_unused_constants(onnx_export):
    prefix, result = onnx_export
    assert result.returncode == 0, result.stderr
    graph = onnx.load(f"{prefix}.onnx").graph
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    assert [t.name for t in graph.initializer if t.name not in read] == []
    assert [n.name for n in graph.node if not any(o in read for o in n.output)] == []


def test_the_onnx_file_loads_in_onnxruntime_without_a_warning(onnx_export, tmp_path):
    """As paddle2onnx writes it, onnxruntime's default logging warns once per unused constant;
    the exported file loads silently (stderr of a fresh process)."""
    prefix, result = onnx_export
    assert result.returncode == 0, result.stderr
    raw = tmp_path / "raw.onnx"
    _raw_onnx(prefix, raw)
    control = run_python("-c", ORT_LOAD, raw)
    assert control.returncode == 0, control.stderr
    assert control.stderr.count("Removing initializer") > 10  # the check below can see them

    loaded = run_python("-c", ORT_LOAD, f"{prefix}.onnx")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stderr == ""


def test_the_onnx_check_refuses_a_file_that_onnxruntime_warns_about(onnx_export, weights, tmp_path):
    prefix, _ = onnx_export
    raw = tmp_path / "raw.onnx"
    _raw_onnx(prefix, raw)
    with pytest.raises(CoatError, match="onnxruntime warns when loading it"):
        export_module.check_onnx(raw, _eager(weights), [(1, 64, 64)])


def test_an_onnx_file_off_parity_is_not_written(weights, tmp_path):
    """The Paddle files are published, the .onnx is not, and the exit code is 1 (here the
    tolerance is made 0 so that any rounding difference fails)."""
    code = (
        "import sys\nimport paddle_model.export.cli as cli\ncli.ONNX_TOLERANCE = 0.0\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    result = run_python("-c", code, VARIANT, tmp_path / "m", "--weights", weights, "--onnx", timeout=900)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("(tolerance 0e+00); it was not written")
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.pdiparams"]


def _forced_staging(tmp_path, suffixes: tuple[str, ...]):
    """Old files of an earlier export at ``tmp_path/m`` for ``suffixes``, and a forced Staging
    for them whose staged files hold b"new"."""
    from paddle_model.export.files import Staging

    for suffix in suffixes:
        (tmp_path / f"m{suffix}").write_bytes(b"old")
    return Staging(tmp_path / "m", suffixes, force=True)


def test_a_forced_export_interrupted_between_two_files_keeps_the_earlier_export(tmp_path, monkeypatch):
    suffixes = (".json", ".pdiparams")
    stage = _forced_staging(tmp_path, suffixes)
    with pytest.raises(KeyboardInterrupt), stage:
        for suffix in suffixes:
            stage.path(suffix).write_bytes(b"new")
        staged = {str(stage.path(suffix)) for suffix in suffixes}
        moved = []

        def interrupted(move):
            def call(source, target, *args, **kwargs):
                if str(source) in staged:  # a new file taking its name
                    moved.append(target)
                    if len(moved) == 2:
                        raise KeyboardInterrupt
                return move(source, target, *args, **kwargs)

            return call

        monkeypatch.setattr(os, "link", interrupted(os.link))
        monkeypatch.setattr(os, "replace", interrupted(os.replace))
        stage.publish(suffixes)
    monkeypatch.undo()
    assert len(moved) == 2
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.pdiparams"]
    assert [(tmp_path / f"m{s}").read_bytes() for s in suffixes] == [b"old", b"old"]


def test_a_forced_export_whose_onnx_is_not_published_removes_the_earlier_onnx(tmp_path):
    stage = _forced_staging(tmp_path, (".json", ".pdiparams", ".onnx"))
    with stage:
        for suffix in (".json", ".pdiparams", ".onnx"):
            stage.path(suffix).write_bytes(b"new")
        stage.publish((".json", ".pdiparams"))  # the .onnx failed its check
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.pdiparams"]
    assert (tmp_path / "m.json").read_bytes() == (tmp_path / "m.pdiparams").read_bytes() == b"new"
