"""convert.py as a user meets it: summaries, and one clear line with exit code 2 on bad input."""

from __future__ import annotations

import pytest

import coat_commands
from converter.errors import PaddleMissingError

from .conftest import assert_refused, run_cli, run_python


def test_summary_names_variant_counts_and_drops(checkpoints, tmp_path):
    result = run_cli(checkpoints("coat_lite_tiny"), tmp_path / "w.pdparams")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "variant      coat_lite_tiny (1000 classes)" in out
    assert "216 keys (152 tensors, 64 aliases)" in out
    assert "transposed   33 Linear weights" in out
    assert "dropped      6 keys" in out and "norm2/norm3: unused by CoaT-Lite" in out
    assert "ties         64 checked equal" in out


def test_writes_safetensors_loadable_by_create_model(checkpoints, tmp_path):
    import numpy as np

    import paddle_model

    pd, st = tmp_path / "w.pdparams", tmp_path / "w.safetensors"
    assert run_cli(checkpoints("coat_tiny"), pd).returncode == 0
    assert run_cli(checkpoints("coat_tiny"), st).returncode == 0
    a = paddle_model.read_weights(pd)
    b = paddle_model.read_weights(st)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert st.stat().st_size < pd.stat().st_size * 1.01  # aliases stored once in both
    paddle_model.create_model("coat_tiny", pretrained=st)


def test_missing_source(tmp_path):
    assert_refused(run_cli(tmp_path / "nope.pth", tmp_path / "out.pdparams"), "no such file")
    assert not (tmp_path / "out.pdparams").exists()


def test_existing_output_needs_force(checkpoints, tmp_path):
    dst = tmp_path / "out.pdparams"
    dst.write_bytes(b"keep me")
    assert_refused(run_cli(checkpoints("coat_lite_tiny"), dst), "already exists", "--force")
    assert dst.read_bytes() == b"keep me"
    assert run_cli(checkpoints("coat_lite_tiny"), dst, "--force").returncode == 0
    assert dst.read_bytes() != b"keep me"


def test_not_a_coat_checkpoint(tmp_path):
    import torch

    src = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), src)
    assert_refused(run_cli(src, tmp_path / "out.pdparams"), "not a CoaT checkpoint", "weight")
    assert list(tmp_path.iterdir()) == [src]


def test_wrong_variant_names_the_mismatches(checkpoints, tmp_path):
    result = run_cli(checkpoints("coat_lite_tiny"), tmp_path / "o.pdparams", "--variant", "coat_lite_mini")
    assert_refused(result, "does not fit coat_lite_mini", "shape mismatches")
    assert not (tmp_path / "o.pdparams").exists()


@pytest.mark.parametrize("bad_name", ["out.pt", "missing_dir/out.pdparams"])
def test_bad_destination(checkpoints, tmp_path, bad_name):
    assert_refused(run_cli(checkpoints("coat_lite_tiny"), tmp_path / bad_name))


def test_a_console_script_without_paddle_says_what_to_install_in_one_line():
    """paddle_model's own check, in a process where Paddle cannot be found: coat-evaluate (through
    coat_commands, as its console script) stops with one line and exit 2, coat-convert runs."""
    code = (
        "import sys; sys.modules['paddle'] = None; sys.argv = ['coat-{0}', '--help']; "
        "import coat_commands; sys.exit(coat_commands.{0}())"
    )
    done = run_python("-c", code.format("evaluate"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(
        "error: paddle_model needs PaddlePaddle >= 3.0, which is not installed: "
        "pip install 'paddlepaddle>=3.0' for the CPU build, or 'paddlepaddle-gpu>=3.0' for a GPU"
    )
    assert len(done.stderr.splitlines()) == 1
    converted = run_python("-c", code.format("convert"), timeout=120)
    assert converted.returncode == 0 and converted.stdout.startswith("usage: coat-convert")


def test_other_import_errors_of_a_command_are_not_taken_for_a_missing_paddle(monkeypatch):
    """A Paddle that is there but broken (or any other failing import) keeps its traceback: it
    must not read as 'not installed', whose advice could put the CPU wheel over a GPU build."""

    def broken(module: str):
        raise ImportError("cannot import name 'Tensor' from 'paddle'", name="paddle")

    monkeypatch.setattr(coat_commands.importlib, "import_module", broken)
    with pytest.raises(ImportError, match="cannot import name 'Tensor'") as raised:
        coat_commands.predict()
    assert not isinstance(raised.value, PaddleMissingError)


@pytest.mark.parametrize(
    "argv0, module, expected",
    [
        ("coat-convert", "convert", "coat-convert 0"),  # as the console script names itself
        ("convert.py", "convert", "convert.py 0"),
        ("coat-predict", "paddle_model.predict", "coat-predict 0"),
        ("coat-evaluate", "paddle_model.evaluate", "coat-evaluate 0"),
    ],
)
def test_version_names_the_command_the_user_ran(argv0, module, expected):
    code = f"import sys, {module} as m; sys.argv = [{argv0!r}, '--version']; m.main()"
    done = run_python("-c", code, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(expected)


@pytest.mark.parametrize(
    "module, expected",
    [
        ("paddle_model.predict", "python -m paddle_model.predict 0"),
        ("paddle_model.evaluate", "python -m paddle_model.evaluate 0"),
    ],
)
def test_version_under_python_m_names_the_module(module, expected):
    done = run_python("-m", module, "--version", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(expected)
