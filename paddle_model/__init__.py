"""CoaT (Co-Scale Conv-Attentional Image Transformers) for PaddlePaddle.

Paddle is not an install requirement of the package (a GPU build must not be replaced by the CPU
wheel), so importing this package checks, from the installed distributions' metadata and
without importing Paddle, that a supported Paddle is there, and says what to install if not.
The model (``create_model``, ``CoaT``, the per-variant factories) imports paddle on first use;
the conversion (:mod:`converter`) needs no Paddle at all.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import warnings
from importlib import metadata

OLDEST_PADDLE = (3, 0, 0)  # the oldest release the tests run on (the torch-free CI job)
PADDLE_DISTRIBUTIONS = ("paddlepaddle", "paddlepaddle-gpu")


def _install() -> str:
    """What to install for a supported Paddle: the cpu extra's packages, or the GPU build."""
    from converter.extras import install_hint

    return (
        f"{install_hint('cpu')} for the CPU build, or 'paddlepaddle-gpu>=3.0' for a GPU "
        "(https://www.paddlepaddle.org.cn/install)"
    )


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version string: '3.0.0rc1' -> (3, 0, 0); () if none."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(n or 0) for n in match.groups()) if match else ()


def paddle_problem() -> str | None:
    """Why the installed Paddle cannot run this package (one line with what to install), or
    None. A Paddle without distribution metadata (a source build) is taken as it is, and so is
    a develop build (version 0.0.0)."""
    if importlib.util.find_spec("paddle") is None:
        return f"paddle_model needs PaddlePaddle >= 3.0, which is not installed: {_install()}"
    for dist in PADDLE_DISTRIBUTIONS:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        release = _release(version)
        if release and release != (0, 0, 0) and release < OLDEST_PADDLE:
            return f"paddle_model needs PaddlePaddle >= 3.0, but {dist} {version} is installed: {_install()}"
        return None
    return None


_problem = paddle_problem()
if _problem is not None:  # its own type, so that the console scripts (coat_commands) say it in one line
    from converter.errors import PaddleMissingError

    raise PaddleMissingError(_problem, name="paddle")

# Paddle's import warns that ccache (a compiler cache for its extension builder) is missing: it
# is not needed here (paddle_model.kernels caches its build itself). Said once, for every command.
warnings.filterwarnings("ignore", message="No ccache found", module="paddle.utils.cpp_extension")

# imported after the check, so that a missing Paddle is said first and in one line
from .errors import CoatError, UnsafePickleError, WeightsError  # noqa: E402
from .runtime import set_cpu_threads  # noqa: E402
from .variants import VARIANTS, CoatVariant, get_variant  # noqa: E402

_LAZY = {
    "CoaT": ".coat",
    "create_model": ".factory",
    **{name: ".factory" for name in VARIANTS},
    "read_weights": ".weights",
    "load_state_dict": ".weights",
}

__all__ = [
    "VARIANTS",
    "CoatVariant",
    "get_variant",
    "CoatError",
    "WeightsError",
    "UnsafePickleError",
    "set_cpu_threads",
    "paddle_problem",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
