"""Helpers shared by the benchmark scripts: child processes timed with their peak memory."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MKL_DEBUG_CPU_TYPE",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "FLAGS_use_mkldnn",
)
# the 2-core settings set by hand before paddle_model.runtime (bench_inference.py's docstring)
TUNED_ENV = {
    "MKL_NUM_THREADS": "2",
    "OMP_NUM_THREADS": "1",
    "MKL_DEBUG_CPU_TYPE": "5",
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "1073741824",
}

# source for the benchmarks' child processes: one warm-up call, then ``repeats`` timed ones
CHILD_TIMINGS = """
import time
def timings(run, repeats):
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times
"""

# child sources that follow a seeded_batch_prelude: timm's model of ``name`` on ``x`` (torch's
# threads as the code before it left them), and a Paddle Inference ``predictor`` on ``x``
TIME_TIMM = """
import torch
from reference.timm_model import build_timm
model = build_timm(name)
xt = torch.from_numpy(x)
with torch.no_grad():
    timed(lambda: model(xt))
"""
TIME_PREDICTOR = """
handle = predictor.get_input_handle(predictor.get_input_names()[0])
output = predictor.get_output_handle(predictor.get_output_names()[0])
def run():
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    predictor.run()
    output.copy_to_cpu()
timed(run)
"""


def child_env(mode: str = "parent") -> dict:
    """The environment of a measured process: ``parent`` (this one's), ``installed`` (this one's
    without any of THREAD_VARS: what a user has who set nothing) or ``tuned`` (installed plus
    TUNED_ENV)."""
    if mode == "parent":
        return dict(os.environ)
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if mode == "installed":
        return clean
    if mode == "tuned":
        return {**clean, **TUNED_ENV}
    raise ValueError(f"unknown environment mode {mode!r}: parent, installed or tuned")


def run_child(
    code: str,
    *args: str,
    env: dict | None = None,
    mode: str = "parent",
    python: str | None = None,
    cwd: str | None = None,
) -> tuple[float, int, str]:
    """Run ``python -c code args`` to completion in the environment ``mode`` (see
    :func:`child_env`) updated by ``env`` (a value of None removes the variable): (wall seconds,
    peak RSS in bytes, stdout). ``python`` is the interpreter (this one by default), ``cwd`` the
    directory it starts in."""
    environ = {k: v for k, v in {**child_env(mode), **(env or {})}.items() if v is not None}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [python or sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
        cwd=cwd,
    )
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024, out.decode()


def child_timings(out: str) -> list:
    """What a child built on ``CHILD_TIMINGS`` printed last: its timings, as JSON."""
    return json.loads(out.strip().splitlines()[-1])


def median(values) -> float:
    return statistics.median(values)


def load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes, as ``uptime`` prints them."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in THREAD_VARS)
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; {threads}"


def seeded_batch_prelude(root, *extra: str) -> str:
    """Source for a benchmark child: ``CHILD_TIMINGS``, the repository ``root`` importable (or,
    with ``root=None``, only what the interpreter has installed), argv ``name batch repeats`` and
    then one string argument per name in ``extra``, the variant's seeded input batch ``x``
    (:func:`reference.parity.seeded_input`, as the parity harness feeds), and
    ``timed(run)``, which prints the timings for the parent's :func:`child_timings`."""
    more = "".join(f"{name} = sys.argv[{i}]\n" for i, name in enumerate(extra, start=4))
    path = "" if root is None else f"sys.path.insert(0, {str(root)!r})\n"
    return (
        CHILD_TIMINGS
        + f"""
import json, sys, warnings
warnings.filterwarnings("ignore")
{path}import numpy as np
from paddle_model.variants import get_variant
from reference.parity import seeded_input
name, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
{more}x = seeded_input(batch, get_variant(name).img_size)
def timed(run):
    print(json.dumps(timings(run, repeats)))
"""
    )
