"""Optional compiled kernels for CPU inference: CoaT's block steps fused into single passes.

Built on first use with ``paddle.utils.cpp_extension`` (about 20 s, then cached in
``$COAT_PADDLE_CACHE`` or ``~/.cache/coat_paddle``). :data:`OPS` lists them; :func:`op` returns
one. Where no compiler is present, or the build fails, or ``COAT_PADDLE_KERNELS=0``, it returns
None and the model keeps Paddle's own ops, with the same numbers. :mod:`.fast` has the layer
classes that use them (chosen at construction by ``create_model(kernels=...)``). Loading them
changes no runtime setting: :mod:`paddle_model.runtime` applies those where inference starts.

The built library is code that runs in this process, so the cache is checked first
(:mod:`paddle_model.cache`): every folder from the cache root down and every file of the build
must be this user's, writable by nobody else, and no symbolic link; otherwise the kernels are
refused with one warning and Paddle's ops run. The build's identity (a sha256 of its source,
flags, CPU, compiler and Paddle) is stamped next to it once it has been imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from converter.writers import atomic_write

from .. import runtime
from ..cache import cache_root, open_private, private_folder, seal_tree, unsafe_tree
from ..capture import Caught, caught_fds
from ..errors import CoatError

_module = None
_tried = False
_SOURCE = Path(__file__).with_name("fused_ops.cc")
_CFLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"]  # no traps: GELU vectorises


def _cache_root() -> Path:
    return cache_root() / f"py{sys.version_info[0]}{sys.version_info[1]}"


def _cpu() -> str:
    """What ``-march=native`` compiles for: the CPU's model and instruction-set flags."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    lines.append(" ".join(line.split()))
                if len(lines) == 2:  # the first processor's; a machine has one model
                    break
    except OSError:
        pass
    return "\n".join(lines) or f"{platform.machine()} {platform.processor()}"


def _compiler() -> str:
    """The C++ compiler Paddle's builder runs (``$CXX``, else ``c++``): its path and version."""
    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx)
    if path is None:
        return f"{cxx}: not found"
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
        version = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        version = ""
    return f"{os.path.realpath(path)} {version}"


def _cache_key(cflags: list[str], ldflags: list[str], paddle_version: str) -> str:
    """sha256 of everything the build depends on: the source, the flags, the CPU that
    ``-march=native`` targets, the compiler and Paddle (its headers and its MKL)."""
    recipe = "\n".join([repr(cflags), repr(ldflags), paddle_version, sys.version, _cpu(), _compiler()])
    return hashlib.sha256(_SOURCE.read_bytes() + recipe.encode()).hexdigest()


@contextlib.contextmanager
def _quiet():
    """Keep the extension builder out of every command's output.

    Paddle prints and logs from this process and builds in a child process (setup.py, g++)
    that writes to this process's stdout and stderr. So Python's streams and logging are
    silenced and file descriptors 1 and 2 redirected to a log; a failed build gets the log's
    tail in its message.
    """
    disabled = logging.root.manager.disable
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        logging.disable(max(disabled, logging.INFO))
        log = Caught()
        try:
            with caught_fds(log, 1, 2):
                yield
        except Exception as e:
            tail = log.text.strip().splitlines()[-5:]
            raise RuntimeError(f"{e}; build log: {' | '.join(tail)}") from e
        finally:
            logging.disable(disabled)


def _flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags: with Paddle's MKL, coat_linear is built too."""
    mkl = runtime.paddle_mkl()
    if mkl is None:
        return _CFLAGS, []
    return _CFLAGS + ["-DCOAT_MKL"], [f"-L{mkl.parent}", f"-l:{mkl.name}", f"-Wl,-rpath,{mkl.parent}"]


def _compile(build: Path):
    """Build the op with Paddle's extension builder and return its module."""
    from paddle.utils.cpp_extension import load

    cflags, ldflags = _flags()
    with _quiet():
        return load(
            name="coat_kernels",
            sources=[str(_SOURCE)],
            extra_cxx_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=str(build),
        )


def _import_built(build: Path):
    """The built op, imported without rebuilding.

    Paddle's public route, ``load()`` into the same build directory, finds nothing to compile
    but still runs ``setup.py build`` in a child process that imports Paddle: 1.3 s on every
    process start, against 0.015 s for the function ``load()`` ends with, which this calls
    while Paddle has it; without it, ``load()`` does the work.
    """
    from paddle.utils.cpp_extension import extension_utils

    import_module = getattr(extension_utils, "_import_module_from_library", None)
    if import_module is None:
        return _compile(build)
    with _quiet():
        return import_module("coat_kernels", str(build / "coat_kernels"), False)


@contextlib.contextmanager
def _build_lock(build: Path):
    """One process at a time checks and builds the cache (others wait, then import). The lock
    file is opened without following a link and never truncated."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = open_private(build / "build.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class UnsafeCacheError(CoatError):
    """The kernel cache holds something this user cannot trust; nothing of it was loaded."""


def _check_cache(build: Path) -> None:
    problem = unsafe_tree(build)
    if problem:
        raise UnsafeCacheError(
            f"{problem}, so the kernel cache is not loaded; remove {build} or set "
            f"COAT_PADDLE_CACHE to a folder only you can write"
        )


def _load():
    global _module, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get("COAT_PADDLE_KERNELS", "1") == "0":
        return None
    import paddle

    cflags, ldflags = _flags()
    digest = _cache_key(cflags, ldflags, paddle.__version__)
    build = _cache_root() / digest[:16]
    stamp = build / "coat_kernels.sha256"  # written once the build has been imported
    try:
        problem = private_folder(cache_root(), build)
        if problem:
            raise UnsafeCacheError(
                f"{problem}, so the kernel cache is not used; set COAT_PADDLE_CACHE to a folder only "
                "you can write"
            )
        with _build_lock(build):  # ranks of a distributed run may all start here at once
            _check_cache(build)  # under the lock: what another process built is checked too
            if stamp.exists() and stamp.read_text() == digest:
                _module = _import_built(build)
                seal_tree(build)  # the import's own bytecode files, made with the user's umask
            else:
                print(
                    f"coat_paddle: compiling the CPU kernels for this machine (once, about 20 s; "
                    f"cached in {build})",
                    file=sys.stderr,
                    flush=True,
                )
                _module = _compile(build)
                seal_tree(build)
                atomic_write(stamp, lambda f: f.write(digest.encode()), force=True)
    except Exception as e:  # no compiler, no headers: fall back, but say so once
        warnings.warn(
            f"coat_paddle: compiled kernels unavailable ({type(e).__name__}: {e}); using Paddle's own ops",
            RuntimeWarning,
            stacklevel=3,
        )
        _module = None
    return _module


def available() -> bool:
    """Whether the compiled ops are built and loaded in this process (loading registers them
    with Paddle, for eager calls and for graphs that use them); builds them on first call."""
    return _load() is not None


@dataclass(frozen=True)
class Op:
    """One compiled op of ``fused_ops.cc``: its name, arguments (inputs, then attributes), and
    whether it is built only with the MKL inside Paddle's x86 wheel."""

    name: str
    args: tuple[str, ...]
    mkl: bool = False


# The compiled ops, the one list of them: fused_ops.cc builds exactly these, with these
# arguments (tests/test_kernels.py reads its PD_BUILD_OPs), and paddle_model.export looks for
# them in exported graphs.
OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("coat_bias_act_", ("x", "bias", "use_gelu")),  # x += bias, then GELU if use_gelu (in place)
        # x @ weight + bias (MKL's product, Paddle's [in, out] weight), then GELU if use_gelu
        Op("coat_linear", ("x", "weight", "bias", "use_gelu"), mkl=True),
        Op("coat_linear_add", ("x", "weight", "bias", "residual"), mkl=True),  # residual + x @ weight + bias
        # x @ weight^T + bias, the patch embedding's convolution weight as [out, C*p*p]
        Op("coat_patch_linear", ("x", "weight", "bias"), mkl=True),
        # residual + fc2(GELU(fc1(x))), in row blocks where the hidden activations would not fit in cache
        Op("coat_mlp", ("x", "w1", "b1", "w2", "b2", "residual"), mkl=True),
        # the non-overlapping p x p patches of [B, C, H, W] as rows [B, H/p * W/p, C*p*p]
        Op("coat_patches", ("x", "p")),
        # the patches of coat_patches taken from a stage's tokens [B, 1 + H*W, C]
        Op("coat_token_patches", ("x", "height", "width", "p")),
        # bilinear resize of image tokens by two taps per axis, CLS kept
        Op("coat_resample", ("x", "y_idx", "y_w", "x_idx", "x_w", "height", "width")),
        # tokens plus the depthwise convolution of their image part, CLS passed through
        Op("coat_conv_pos_enc", ("x", "weight", "bias", "height", "width")),
        # factorised attention plus conv relative position encoding, [B, N, 3C] -> [B, N, C]
        Op("coat_factor_attn", ("qkv", "weights", "biases", "height", "width", "heads", "scale")),
        Op("coat_layer_norm", ("x", "weight", "bias", "eps")),  # LayerNorm over the last axis
    )
}


def op(name: str):
    """The compiled op ``name`` of :data:`OPS`, called with its ``args``; None where the kernels
    are not built (or, for an ``mkl`` op, where Paddle's wheel has no MKL)."""
    if name not in OPS:
        raise KeyError(f"{name!r} is not one of the compiled ops ({', '.join(OPS)})")
    module = _load()
    return None if module is None else getattr(module, name, None)


def has_op(name: str) -> bool:
    """Whether the loaded kernels include the op ``name``."""
    return op(name) is not None
