"""The CPU settings applied at first use (paddle_model.runtime), the Paddle requirement check and
the kernels' cache key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from types import SimpleNamespace

import paddle
import pytest

import paddle_model
from paddle_model import kernels, runtime
from paddle_model.kernels import fast

from .conftest import ROOT

CLEAN = {
    k: v
    for k, v in os.environ.items()
    if k not in (*runtime.THREAD_VARS, *runtime.MALLOC_VARS, runtime.CPU_TYPE_VAR)
}


def run_python(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh process (the clean environment unless told) and return the JSON
    it printed last."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env or CLEAN,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


FIRST_USE = """
import json, os, paddle, paddle_model
from paddle_model import runtime
model = paddle_model.create_model("coat_lite_tiny", num_classes=10)
x = paddle.randn([1, 3, 64, 64])
model(x).sum().backward()  # training: Paddle's ops, nothing configured
trained = runtime._configured
model.eval()
with paddle.no_grad():
    model(x)
print(json.dumps({"before": trained, "applied": runtime.configure(), "mkl": runtime.mkl_threads(),
                  "cpus": len(os.sched_getaffinity(0)), "cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE"),
                  "vendor": runtime.cpu_vendor()}))
"""


def test_first_eager_cpu_inference_sizes_threads_and_malloc_once():
    """In a fresh process with nothing set, a training step configures nothing; the first
    float32 inference call gives Paddle's MKL the process's CPUs and raises glibc's
    thresholds; MKL's AMD code path only on AMD processors."""
    got = run_python(FIRST_USE)
    assert got["before"] is False
    assert got["applied"]["threads"] == got["cpus"] == got["mkl"]
    assert got["applied"]["malloc"] == runtime.LARGE_BLOCK
    assert (got["cpu_type"] == "5") == (got["vendor"] == "AuthenticAMD")


def test_variables_the_user_set_win():
    env = {**CLEAN, "MKL_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MKL_DEBUG_CPU_TYPE": "4"}
    got = run_python(FIRST_USE, env)
    assert got["applied"] == {}
    assert got["mkl"] == 1
    assert got["cpu_type"] == "4"


def test_paddles_own_omp_setting_is_not_taken_for_the_users(monkeypatch):
    """Importing Paddle writes OMP_NUM_THREADS=1 into os.environ when it is unset, and the
    processes it starts (paddle.distributed.launch's ranks) inherit it."""
    monkeypatch.setattr(runtime, "_initial_environment", lambda: {"OMP_NUM_THREADS"})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not runtime.user_set("OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.user_set("OMP_NUM_THREADS")
    monkeypatch.setattr(runtime, "_initial_environment", lambda: set())
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert not runtime.user_set("MKL_NUM_THREADS")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")  # set in Python, before the first call
    assert runtime.user_set("MKL_NUM_THREADS")


def test_torch_in_the_same_process_keeps_its_threads():
    code = """
import json, torch
before = torch.get_num_threads()
import paddle, paddle_model
model = paddle_model.create_model("coat_lite_tiny", num_classes=10); model.eval()
with paddle.no_grad():
    model(paddle.randn([1, 3, 64, 64]))
from paddle_model import runtime
print(json.dumps({"before": before, "after": torch.get_num_threads(), "paddle": runtime.mkl_threads()}))
"""
    got = run_python(code)
    assert got["after"] == got["before"]
    assert got["paddle"] == len(os.sched_getaffinity(0))


def test_ranks_on_one_node_share_its_cpus(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("PADDLE_NPROC_PER_NODE", raising=False)
    monkeypatch.delenv("PADDLE_LOCAL_SIZE", raising=False)
    assert runtime.default_threads() == cpus
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "2")
    assert runtime.default_threads() == max(1, cpus // 2)
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", str(4 * cpus))
    assert runtime.default_threads() == 1


class _Threads(paddle.io.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return paddle.to_tensor([runtime.default_threads()])


def test_a_dataloader_worker_takes_one_thread():
    loader = paddle.io.DataLoader(_Threads(), batch_size=2, num_workers=1)
    (batch,) = list(loader)
    assert batch.numpy().ravel().tolist() == [1, 1]
    assert runtime.default_threads() == len(os.sched_getaffinity(0))  # the main process: all


def test_amd_processors_get_mkls_avx2_path(monkeypatch):
    monkeypatch.setattr(runtime, "_configured", False)
    monkeypatch.setattr(runtime, "_applied", {})
    monkeypatch.setattr(runtime, "_set_mkl_threads", lambda n: True)
    monkeypatch.setattr(runtime, "_raise_malloc_thresholds", lambda: True)
    monkeypatch.setattr(runtime, "_initial_environment", lambda: set())
    monkeypatch.delenv(runtime.CPU_TYPE_VAR, raising=False)
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "GenuineIntel")
    assert "cpu_type" not in runtime.configure()
    assert runtime.CPU_TYPE_VAR not in os.environ
    monkeypatch.setattr(runtime, "_configured", False)
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "AuthenticAMD")
    assert runtime.configure()["cpu_type"] == "5"
    assert os.environ[runtime.CPU_TYPE_VAR] == "5"


def test_set_cpu_threads_sets_paddles_mkl_and_refuses_nonsense():
    before = runtime.mkl_threads()
    try:
        paddle_model.set_cpu_threads(1)
        assert runtime.mkl_threads() == 1
        paddle_model.set_cpu_threads(2)
        assert runtime.mkl_threads() == 2
    finally:
        runtime.set_cpu_threads(before)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="whole number of threads"):
            paddle_model.set_cpu_threads(bad)


def test_only_eager_cpu_float32_inference_reaches_the_kernels(monkeypatch):
    """The one rule of the fast layers (Compiled.compiled): a tensor on another device (a GPU
    build's), float64, with gradients or in training keeps Paddle's ops, and then the kernels
    are not even asked for (asking builds them on first use)."""
    gpu = SimpleNamespace(dtype=paddle.float32, place=SimpleNamespace(is_cpu_place=lambda: False))
    cpu = SimpleNamespace(dtype=paddle.float32, place=SimpleNamespace(is_cpu_place=lambda: True))
    assert not fast._cpu_float32(gpu)
    assert fast._cpu_float32(cpu)
    assert not fast._cpu_float32(SimpleNamespace(dtype=paddle.float64, place=cpu.place))
    model = paddle_model.create_model("coat_lite_tiny", num_classes=10)
    layer = model.serial_blocks1[0]
    asked = []
    monkeypatch.setattr(fast, "_ops", lambda: asked.append(1) or True)
    x = paddle.zeros([1, 3, 64, 64])
    model.train()
    with paddle.no_grad():
        assert not layer.compiled(x)  # training
    model.eval()
    assert not layer.compiled(x)  # gradients on
    with paddle.no_grad():
        assert not layer.compiled(x.astype("float64"))
        assert not asked
        assert layer.compiled(x)
    assert asked == [1]


def test_loading_the_kernels_changes_no_runtime_setting():
    """available() builds and loads the ops; the threads, MKL's code path and malloc are set
    where inference starts, not there."""
    code = """
import json
from paddle_model import kernels, runtime
loaded = kernels.available()
print(json.dumps({"loaded": loaded, "configured": runtime._configured}))
"""
    assert run_python(code) == {"loaded": True, "configured": False}


def test_the_kernel_cache_key_covers_cpu_compiler_and_paddle(monkeypatch):
    """A home directory shared by machines of two CPU generations must not load a
    ``-march=native`` build made for the other (an illegal instruction)."""
    flags = kernels._flags()
    key = kernels._cache_key(*flags, "3.3.1")
    assert key == kernels._cache_key(*flags, "3.3.1")
    assert key != kernels._cache_key(*flags, "3.0.0")
    assert key != kernels._cache_key(flags[0] + ["-DX"], flags[1], "3.3.1")
    cpu = kernels._cpu()
    assert cpu.startswith("model name") and "\nflags" in cpu
    monkeypatch.setattr(kernels, "_cpu", lambda: cpu + " coat_other_cpu_flag")  # a flag it lacks
    assert kernels._cache_key(*flags, "3.3.1") != key
    monkeypatch.setattr(kernels, "_cpu", lambda: cpu)
    monkeypatch.setattr(kernels, "_compiler", lambda: "/usr/bin/g++-13 g++ (Debian 13.1.0) 13.1.0")
    assert kernels._cache_key(*flags, "3.3.1") != key


def test_a_missing_or_old_paddle_is_one_line_saying_what_to_install(monkeypatch):
    assert paddle_model.paddle_problem() is None
    real = metadata.version

    def old(dist: str) -> str:
        if dist == "paddlepaddle":
            return "2.6.2"
        return real(dist)

    monkeypatch.setattr(metadata, "version", old)
    problem = paddle_model.paddle_problem()
    assert problem.startswith("paddle_model needs PaddlePaddle >= 3.0, but paddlepaddle 2.6.2 is installed")
    assert "pip install 'paddlepaddle>=3.0' for the CPU build" in problem
    assert "'paddlepaddle-gpu>=3.0' for a GPU" in problem and "coat-paddle[" not in problem
    no_paddle = "import sys; sys.modules['paddle'] = None; import paddle_model"
    done = subprocess.run(
        [sys.executable, "-c", no_paddle], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "converter.errors.PaddleMissingError: paddle_model needs PaddlePaddle >= 3.0, which is not "
        "installed: pip install 'paddlepaddle>=3.0'"
    )


def test_mkls_code_path_is_chosen_at_the_first_inference_not_at_import():
    """MKL reads MKL_DEBUG_CPU_TYPE at its first dispatch, so setting it at the first inference
    call (after Paddle's import and the model's construction) still reaches it: with the AMD
    rule forced, Paddle's MKL dispatches to its AVX2 branch, on any x86-64 CPU with AVX2 (an
    AMD one's default is the generic branch 0; an Intel one's is 5 or, with AVX-512, more)."""
    code = """
import json, paddle, paddle_model
from paddle_model import runtime
runtime.cpu_vendor = lambda: "AuthenticAMD"
model = paddle_model.create_model("coat_lite_tiny", num_classes=10); model.eval()
with paddle.no_grad():
    model(paddle.randn([1, 3, 64, 64]))
print(json.dumps({"applied": runtime.configure(), "branch": runtime.mkl_code_path()}))
"""
    got = run_python(code)
    assert got["applied"]["cpu_type"] == "5"
    assert got["branch"] == 5, got
