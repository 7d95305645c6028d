"""SIGTERM stops every command that loads Paddle as it stops the others: one ``error: terminated``
line, exit code 143, its cleanup run, nothing left behind.

``import paddle`` installs Paddle's own C-level SIGTERM handler (it prints a stack and kills the
process); the command wrapper (converter.cli.command) puts its own back once Paddle is imported.
Each command runs in a child that holds it at a point of its work reached after Paddle's import
(an audit hook on opening a named file), so the signal arrives while the command is busy.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import paddle
import pytest

from .conftest import sample_image_paths

VARIANT = "coat_lite_tiny"

# python -c HOLD TRIGGER MODULE ARGS...: run ``python -m MODULE ARGS``; when its main thread
# opens (or renames) a path containing TRIGGER after Paddle is imported, print "working", wait.
HOLD = """
import runpy, sys, threading, time
trigger, module = sys.argv[1], sys.argv[2]
held = []
def hold(event, args):
    main = threading.current_thread() is threading.main_thread()
    if event not in ("open", "os.rename") or held or not main:
        return
    if trigger in str(args[0]) and "paddle" in sys.modules:
        held.append(True)
        print("working", flush=True)
        time.sleep(120)
sys.addaudithook(hold)
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Seeded weights of the 1000-class model, saved with paddle.save."""
    from paddle_model import create_model

    path = tmp_path_factory.mktemp("weights") / "seeded.pdparams"
    paddle.seed(0)
    paddle.save(create_model(VARIANT).state_dict(), str(path))
    return path


def terminate_at_work(trigger: str | Path, module: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``module`` in a child held at ``trigger``, send SIGTERM there; its exit and output."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(trigger), module, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        before = []  # what the command printed before it was held (evaluate's header)
        while (line := proc.stdout.readline()) not in ("working\n", ""):
            before.append(line)
        assert line == "working\n", "".join(before) + proc.stderr.read()[-3000:]
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert time.perf_counter() - start < 10
    finally:
        proc.kill()
    return subprocess.CompletedProcess(
        proc.args, code, "".join(before) + proc.stdout.read(), proc.stderr.read()
    )


def assert_terminated(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 143, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == "error: terminated", done.stderr[-3000:]
    assert "SIGTERM" not in done.stderr and "Traceback" not in done.stderr  # not Paddle's handler


def test_predict(weights, tmp_path):
    image = sample_image_paths()[0]
    done = terminate_at_work(
        weights, "paddle_model.predict", image, "--variant", VARIANT, "--weights", weights, cwd=tmp_path
    )
    assert_terminated(done)
    assert done.stdout == ""  # no result printed after "working"
    assert list(tmp_path.iterdir()) == []


def test_evaluate(weights, tmp_path):
    data = tmp_path / "val" / "n02123045"
    data.mkdir(parents=True)
    for image in sample_image_paths()[:2]:
        (data / image.name).write_bytes(image.read_bytes())
    result = tmp_path / "out" / "result.json"
    result.parent.mkdir()
    args = ["--variant", VARIANT, "--weights", weights, "--workers", "0", "--quiet", "--result", result]
    # held as it writes the result (its weights are read before Paddle is imported, its images in
    # the loader's thread)
    done = terminate_at_work(result.parent, "paddle_model.evaluate", tmp_path / "val", *args, cwd=tmp_path)
    assert_terminated(done)
    assert list(result.parent.iterdir()) == []


def test_export(weights, tmp_path):
    out = tmp_path / "deploy"
    out.mkdir()
    done = terminate_at_work(
        weights, "paddle_model.export", VARIANT, out / "m", "--weights", weights, cwd=tmp_path
    )
    assert_terminated(done)
    assert list(out.iterdir()) == []


def test_release(checkpoints, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / f"{VARIANT}_seeded.pth").write_bytes(checkpoints(VARIANT).read_bytes())
    # held at its first file opened in the staging folder once Paddle is loaded (the parity run)
    args = [src, out, "--allow-unofficial"]
    done = terminate_at_work("/.staging-", "reference.release", *args, cwd=tmp_path)
    assert_terminated(done)
    assert not out.exists() or list(out.iterdir()) == []
    assert not list(tmp_path.rglob(".staging-*")) and not list(tmp_path.rglob("*.part"))


def test_train_checkpoints_the_last_step_and_exits_143(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from paddle_model.train import checkpoint

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                tmp_path / "data" / c / f"{i}.png"
            )
    out = tmp_path / "run"
    args = ["--variant", VARIANT, "--img-size", "32", "--quiet", "--epochs", "2", "--batch-size", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "paddle_model.train", tmp_path / "data", *args, "--output", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        end = time.monotonic() + 240
        while not (out / "log.jsonl").exists() or '"kind": "step"' not in (out / "log.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert_terminated(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    last_step = max(r["step"] for r in rows if r["kind"] == "step")
    assert checkpoint.load(out / "last.safetensors").state["step"] == last_step
