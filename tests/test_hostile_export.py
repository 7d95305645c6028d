"""Export against a full disk, a read-only folder and sizes the model cannot take: one line, exit
2, nothing written, no crash. The disk cases mount a small tmpfs, which needs root (as CI and
these machines run); without it they fail and say why."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import run_module

VARIANT = "coat_lite_tiny"  # 23 MB of parameters: more than the tmpfs holds


def _tmpfs(folder, size: str):
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"cannot mount a tmpfs for the export's disk tests: {done.stderr.strip()}"
    return folder


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs: the program (0.5 MB) fits, the parameters (23 MB) do not."""
    yield _tmpfs(tmp_path / "small", "2m")
    subprocess.run(["umount", str(tmp_path / "small")], check=True)


@pytest.fixture
def medium_tmpfs(tmp_path):
    """A 40 MiB tmpfs: the Paddle files (23.4 MB) fit, they and the .onnx (23 MB) do not."""
    yield _tmpfs(tmp_path / "medium", "40m")
    subprocess.run(["umount", str(tmp_path / "medium")], check=True)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_full_disk_names_the_file_and_leaves_nothing(small_tmpfs):
    """Paddle's writer does not check its writes: the export reads them back and finds them short."""
    result = run_module("paddle_model.export", VARIANT, small_tmpfs / "deploy" / "m")
    line = _one_error_line(result)
    assert line == f"error: {small_tmpfs}/deploy/m.pdiparams: No space left on device (ENOSPC)"
    assert "exported" not in result.stdout
    assert os.listdir(small_tmpfs) == []  # the folder it created is gone too


def test_a_full_disk_while_writing_the_onnx_file_names_it_and_leaves_nothing(medium_tmpfs):
    """With --onnx the export is all three files or none."""
    line = _one_error_line(run_module("paddle_model.export", VARIANT, medium_tmpfs / "m", "--onnx"))
    assert line == f"error: {medium_tmpfs}/m.onnx: No space left on device (ENOSPC)"
    assert os.listdir(medium_tmpfs) == []


def test_a_read_only_folder_says_so_and_leaves_nothing(small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    line = _one_error_line(run_module("paddle_model.export", VARIANT, small_tmpfs / "m"))
    assert line == f"error: {small_tmpfs}/m.json: Read-only file system (EROFS)"
    line = _one_error_line(run_module("paddle_model.export", VARIANT, small_tmpfs / "deploy" / "m"))
    assert line == f"error: {small_tmpfs}/deploy: Read-only file system (EROFS)"
    assert os.listdir(small_tmpfs) == []


@pytest.mark.parametrize("size", ["-3", "0", "16", "31"])
def test_a_kernels_size_below_the_minimum_is_refused_before_tracing(tmp_path, size):
    """--size=-3 --kernels used to abort the process (SIGABRT), --size 0 exported at 224 and 16
    wrote a graph whose compiled ops return memory they never wrote."""
    result = run_module("paddle_model.export", VARIANT, tmp_path / "out" / "m", "--kernels", f"--size={size}")
    assert _one_error_line(result) == (
        f"error: --size {size}: {VARIANT} needs an input of at least 32x32 pixels (each of its four "
        "stages needs one token per side); give --size 32 or more"
    )
    assert os.listdir(tmp_path) == []


def test_a_size_that_is_not_a_number_is_a_usage_error(tmp_path):
    result = run_module("paddle_model.export", VARIANT, tmp_path / "m", "--kernels", "--size", "1e3")
    assert _one_error_line(result).startswith("error: argument --size: invalid int value: '1e3'")
    assert os.listdir(tmp_path) == []


def test_a_prefix_under_a_file_or_at_a_folder_is_refused(tmp_path):
    (tmp_path / "file").write_bytes(b"mine")
    line = _one_error_line(run_module("paddle_model.export", VARIANT, tmp_path / "file" / "m"))
    assert line == f"error: {tmp_path}/file: is not a folder; give another output prefix"
    (tmp_path / "m.json").mkdir()
    line = _one_error_line(run_module("paddle_model.export", VARIANT, tmp_path / "m"))
    assert line == f"error: {tmp_path}/m.json: is a folder; give another output prefix"
    assert sorted(os.listdir(tmp_path)) == ["file", "m.json"]
    assert (tmp_path / "file").read_bytes() == b"mine" and os.listdir(tmp_path / "m.json") == []
