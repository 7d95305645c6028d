"""The Paddle Inference predictor for an exported model, with the compiled ops it needs."""

from __future__ import annotations

from pathlib import Path

from ..errors import CoatError
from .paddle import kernel_ops


def create_predictor(prefix: str | Path, threads: int = 1):
    """A Paddle Inference predictor on the CPU (oneDNN) for the model exported at ``prefix``.

    For a model exported with kernels, the compiled ops are built if needed and registered in
    this process first; where they cannot be, this raises CoatError rather than Paddle's
    unknown-operator error.
    """
    from paddle import inference

    from .. import kernels as compiled

    for suffix in (".json", ".pdiparams"):
        if not Path(f"{prefix}{suffix}").is_file():
            raise CoatError(
                f"{prefix}{suffix}: no such file; export the model first (python -m paddle_model.export)"
            )
    used = kernel_ops(prefix)
    if used and not compiled.available():
        raise CoatError(
            f"{prefix}.json was exported with --kernels, and the compiled kernels are "
            "not available here; export it again without --kernels"
        )
    missing = [name for name in used if not compiled.has_op(name)]
    if missing:  # coat_linear needs the MKL of an x86 Paddle build
        raise CoatError(
            f"{prefix}.json uses {', '.join(missing)}, which this Paddle build cannot "
            "provide (no MKL in its wheel); export it again here"
        )
    config = inference.Config(f"{prefix}.json", f"{prefix}.pdiparams")
    config.disable_gpu()
    config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    return inference.create_predictor(config)
