"""CPU settings for eager inference that Paddle's x86 wheel leaves slow, applied once at first use.

Paddle's wheel runs its math library (the MKL 2019 it ships, ``libmklml_intel``) on one
thread unless ``MKL_NUM_THREADS``/``OMP_NUM_THREADS`` say otherwise, that MKL takes its slow
generic code path on AMD processors unless ``MKL_DEBUG_CPU_TYPE=5``, and glibc hands every
large temporary tensor fresh pages from ``mmap`` (page faults on every forward pass) unless its
thresholds are raised. BENCHMARKS.md has the measurements. :func:`configure` sets what the user
did not set, after Python started:

- the threads of Paddle's MKL (which the compiled kernels follow), by ``MKL_Set_Num_Threads``
  on Paddle's own ``libmklml_intel`` through ctypes: torch's MKL and OpenMP are separate
  libraries and keep their settings. Their number is the CPUs this process may run on
  (``os.sched_getaffinity``), divided among the ranks that ``paddle.distributed.launch``
  started on this node; one in a DataLoader worker. Paddle's own OpenMP stays at the one
  thread Paddle gives it, so that its ops do not spin against MKL's threads.
- ``MKL_DEBUG_CPU_TYPE=5`` on AMD processors, in ``os.environ``: that MKL reads it at its
  first dispatch (not when Paddle is imported), and newer MKLs, such as torch's, ignore it.
  Without it, that MKL dispatches AMD processors to its generic code path (branch 0), with it to
  its AVX2 one (branch 5); :func:`mkl_code_path` reports which. (``MKL_Get_Version`` names
  "Intel(R) Architecture processors" either way: it does not tell.)
- glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` at 1 GiB by ``mallopt``, the values of
  ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``.

A variable the user set wins (:func:`user_set`): ``MKL_NUM_THREADS`` or ``OMP_NUM_THREADS``
(other than the ``1`` that Paddle writes itself) leaves the threads alone, ``MKL_DEBUG_CPU_TYPE``
the code path, either ``MALLOC_*_THRESHOLD_`` the allocator.
:func:`set_cpu_threads` chooses the threads explicitly, before or after the first call.
:class:`paddle_model.coat.CoaT` calls :func:`configure` where eager inference starts (eval mode,
no gradients); training and graphs do not reach it, and neither does loading the kernels.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from pathlib import Path

THREAD_VARS = ("MKL_NUM_THREADS", "OMP_NUM_THREADS")
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
CPU_TYPE_VAR = "MKL_DEBUG_CPU_TYPE"
LARGE_BLOCK = 1 << 30  # bytes: blocks below this come from the heap and stay there when freed
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

_lock = threading.Lock()
_configured = False
_chosen_threads: int | None = None  # set by set_cpu_threads: configure() leaves it
_applied: dict = {}


def configure() -> dict:
    """Apply the CPU settings once per process; later calls return what the first one did.

    Returns what was set, by name (``threads``, ``cpu_type``, ``malloc``), for tests and logs.
    """
    global _configured
    with _lock:
        if _configured:
            return dict(_applied)
        _configured = True
        if not any(user_set(var) for var in THREAD_VARS) and _chosen_threads is None:
            threads = default_threads()
            if _set_mkl_threads(threads):
                _applied["threads"] = threads
        if not user_set(CPU_TYPE_VAR) and cpu_vendor() == "AuthenticAMD":
            os.environ[CPU_TYPE_VAR] = "5"
            _applied["cpu_type"] = "5"
        if not any(user_set(var) for var in MALLOC_VARS) and _raise_malloc_thresholds():
            _applied["malloc"] = LARGE_BLOCK
        return dict(_applied)


def set_cpu_threads(n: int) -> None:
    """Run Paddle's matrix products and this project's compiled CPU ops on ``n`` threads.

    Overrides the automatic choice (and ``MKL_NUM_THREADS``) for the rest of the process.
    """
    global _chosen_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_cpu_threads needs a whole number of threads >= 1, not {n!r}")
    with _lock:
        _chosen_threads = n
        _set_mkl_threads(n)


def user_set(var: str) -> bool:
    """Whether the user set ``var``: in the environment the process started with, or in
    ``os.environ`` since. ``OMP_NUM_THREADS=1`` does not count: importing Paddle writes it into
    ``os.environ`` when it is unset, so every process a Paddle process starts (the ranks of
    ``paddle.distributed.launch``) inherits it; one thread is ``MKL_NUM_THREADS=1`` or
    :func:`set_cpu_threads`."""
    if var == "OMP_NUM_THREADS" and os.environ.get(var) == "1":
        return False
    return var in os.environ or var in _initial_environment()


def _initial_environment() -> set[str]:
    """The names in the environment this process was started with (Linux), else os.environ's."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return set(os.environ)
    return {entry.split(b"=", 1)[0].decode(errors="replace") for entry in entries if b"=" in entry}


def default_threads() -> int:
    """The threads one process should use: its CPUs, shared among the local ranks of a
    ``paddle.distributed.launch`` run; 1 in a DataLoader worker."""
    if _in_dataloader_worker():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    ranks = _local_ranks()
    return max(1, cpus // ranks)


def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``), or '' where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "AuthenticAMD" if "AMD" in platform.processor() else ""


def paddle_mkl() -> Path | None:
    """The MKL library inside the Paddle wheel (x86 builds), or None."""
    import paddle

    lib = Path(paddle.__file__).parent / "libs" / "libmklml_intel.so"
    return lib if lib.is_file() else None


def mkl_threads() -> int | None:
    """The threads Paddle's MKL runs on now, or None without it."""
    lib = paddle_mkl()
    return None if lib is None else ctypes.CDLL(str(lib)).MKL_Get_Max_Threads()


def mkl_code_path() -> int | None:
    """The code branch Paddle's MKL dispatches its kernels to (its ``mkl_serv_cpu_detect``): 0 the
    generic one, 5 AVX2 (what ``MKL_DEBUG_CPU_TYPE=5`` asks for), more for AVX-512; None
    without that MKL or that function. Asking fixes the branch, as the first dispatch does."""
    lib = paddle_mkl()
    detect = None if lib is None else getattr(ctypes.CDLL(str(lib)), "mkl_serv_cpu_detect", None)
    return None if detect is None else int(detect())


def _set_mkl_threads(n: int) -> bool:
    lib = paddle_mkl()
    if lib is None:  # a Paddle built without MKL: its own defaults stay
        return False
    ctypes.CDLL(str(lib)).MKL_Set_Num_Threads(n)  # the library Paddle loaded: same handle
    return True


def _raise_malloc_thresholds() -> bool:
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mmap_set = mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK)
    trim_set = mallopt(_M_TRIM_THRESHOLD, LARGE_BLOCK)
    return bool(mmap_set and trim_set)


def _local_ranks() -> int:
    """How many ranks ``paddle.distributed.launch`` runs on this node (1 outside it)."""
    for var in ("PADDLE_LOCAL_SIZE", "PADDLE_NPROC_PER_NODE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _in_dataloader_worker() -> bool:
    import paddle.io

    return paddle.io.get_worker_info() is not None
