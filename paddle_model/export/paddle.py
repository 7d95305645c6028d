"""Trace a CoaT to a static graph and save it with ``paddle.jit.save``, complete or nothing.

The saved files are read back by ``paddle.jit.load`` before they are published: Paddle's writer
does not check its writes, so a full disk otherwise leaves a short ``.pdiparams`` that only fails
when a user loads it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import CoatError
from ..kernels import OPS
from ..variants import get_variant
from .capture import sorted_stderr
from .files import Staging, disk_full, no_space

SUFFIXES = (".json", ".pdiparams")
# Paddle 3.3 logs this warning (glog, C++) while tracing any model: noise to a user
_TRACE_NOISE = re.compile(r"not support input out tensor")


def check_size(variant: str, kernels: bool, size: int | None) -> int | None:
    """The input side of the export (None: any), or CoatError for a size it cannot have."""
    if size is None:
        return get_variant(variant).img_size if kernels else None
    if not kernels:
        raise CoatError(
            "--size fixes the input size of a --kernels export; without --kernels the "
            "exported model takes any size"
        )
    smallest = get_variant(variant).min_input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < smallest:
        raise CoatError(
            f"--size {size}: {variant} needs an input of at least {smallest}x{smallest} pixels (each of "
            f"its four stages needs one token per side); give --size {smallest} or more"
        )
    return size


def export(
    variant: str,
    weights: str | Path | None,
    prefix: str | Path,
    kernels: bool = False,
    size: int | None = None,
    force: bool = False,
):
    """Trace ``variant`` (with ``weights``) to a static graph and save it at ``prefix``
    (``prefix.json`` and ``prefix.pdiparams``; missing parent folders are created).

    The input is float32 [N, 3, H, W]: any N, H, W; with ``kernels``, H = W = ``size`` (default
    the variant's image size, at least :func:`min_input_size`) and the graph uses the compiled
    ops. Complete or nothing: existing files are replaced only if ``force``; a failure (CoatError,
    or OSError naming the file: disk full, read-only folder) leaves nothing. Returns the traced
    layer.
    """
    side = check_size(variant, kernels, size)
    model = build(variant, weights, kernels)
    with Staging(prefix, SUFFIXES, force) as stage:
        static = save(model, stage, side)
        stage.publish(SUFFIXES)
    return static


def build(variant: str, weights: str | Path | None, kernels: bool):
    """The model to export, in eval mode: built (and its weights read) before any folder or
    file of the export is made."""
    from .. import kernels as compiled
    from ..factory import create_model
    from ..kernels import fast

    if kernels and not compiled.available():  # said in the command's terms, before any work
        raise CoatError(
            "the compiled kernels are not available here (see the warning above, or "
            "COAT_PADDLE_KERNELS=0); export without --kernels"
        )
    model = create_model(variant, pretrained=weights, kernels=True if kernels else None)
    if kernels:
        fast.trace_compiled(model)  # the traced graph holds the compiled ops
    model.eval()
    return model


def save(model, stage: Staging, side: int | None):
    """Trace ``model`` and save it at ``stage.staged_prefix``, then read it back; ``side`` as
    :func:`check_size` returns it. Returns the traced layer."""
    import paddle

    spec = [paddle.static.InputSpec([None, 3, side, side], "float32", name="image")]
    try:
        with sorted_stderr(_TRACE_NOISE):
            static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
            paddle.jit.save(static, str(stage.staged_prefix))
    except RuntimeError:
        if no_space(stage.staged_prefix.parent):  # Paddle could not open or write a file
            raise disk_full(stage.destination(".pdiparams")) from None
        raise  # a tracing failure is a bug: its traceback is wanted
    _check_saved(stage)
    return static


def _check_saved(stage: Staging) -> None:
    """Read the saved program and every parameter back, as a user's ``paddle.jit.load`` will."""
    import paddle

    program = stage.path(".json")
    try:
        with program.open("rb") as f:
            json.load(f)
    except ValueError:
        if no_space(stage.staged_prefix.parent):
            raise disk_full(stage.destination(".json")) from None
        raise CoatError(f"{stage.destination('.json')}: Paddle wrote an unreadable program") from None
    try:
        with sorted_stderr(_TRACE_NOISE):
            paddle.jit.load(str(stage.staged_prefix))
    except (RuntimeError, ValueError, OSError) as e:
        if no_space(stage.staged_prefix.parent):
            raise disk_full(stage.destination(".pdiparams")) from None
        raise CoatError(
            f"{stage.destination('.pdiparams')}: Paddle wrote parameters it cannot read back "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def kernel_ops(prefix: str | Path) -> list[str]:
    """The compiled ops that the model saved at ``prefix`` uses (none unless exported with
    ``kernels=True``)."""
    text = Path(f"{prefix}.json").read_text(errors="replace")
    return [name for name in OPS if f'.{name}"' in text]  # PIR names ops "<dialect>.<op>"


def uses_kernels(prefix: str | Path) -> bool:
    """Whether the model saved at ``prefix`` was exported with ``kernels=True``."""
    return bool(kernel_ops(prefix))
