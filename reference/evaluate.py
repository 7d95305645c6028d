"""Evaluate converted CoaT weights with timm's CoaT beside them, on the very same batches.

    python -m reference.evaluate imagenet/val --variant coat_lite_small --weights coat_lite_small.pdparams
    python -m reference.evaluate ... --reference-weights coat_lite_small_8d362f48.pth

The options of ``python -m paddle_model.evaluate`` and the same run, plus the reference:
timm's model with the Paddle weights converted back to its layout (``converter.reverse``), or
with the original PyTorch checkpoint (``--reference-weights``). The result adds timm's
accuracy, the top-1 agreement of the two frameworks, the largest logit difference, and every
image where they disagree with timm's margin between its top two classes (a disagreement
should be a near tie).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from converter.cli import command
from converter.layout import num_classes_in
from converter.reverse import paddle_layout_for, to_torch_layout
from converter.variants import get_variant

from . import require


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from paddle_model.evaluate.cli import build_parser, check_args

    p = build_parser("python -m reference.evaluate", __doc__.split("\n")[0])
    p.add_argument(
        "--reference",
        action="store_true",
        help="accepted for the old spelling: this command always runs timm beside Paddle",
    )
    p.add_argument(
        "--reference-weights",
        type=Path,
        help="the original PyTorch checkpoint for timm (default: the Paddle weights, converted back)",
    )
    return check_args(p, p.parse_args(argv))


def timm_reference(variant: str, paddle_state: dict, weights: Path, source: Path | None):
    """timm's model as a numpy batch -> logits callable, and what it is, for the result.

    From the original PyTorch checkpoint if given, else from the Paddle weights converted back.
    """
    import timm
    import torch

    from .timm_model import build_timm, load_timm_state, timm_from_checkpoint

    if source is not None:
        model, name = timm_from_checkpoint(source, variant), str(source)
    else:
        shapes = {k: tuple(v.shape) for k, v in paddle_state.items()}
        _, layout = paddle_layout_for(shapes, get_variant(variant), str(weights))
        model = build_timm(variant, num_classes=num_classes_in(paddle_state))
        load_timm_state(model, to_torch_layout(paddle_state, layout, str(weights)))
        name = f"{weights} (reverse-converted)"

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return logits, {"model": f"timm {timm.__version__}", "weights": name}


@command
def main(argv: list[str] | None = None) -> int:
    """``python -m reference.evaluate``: check the frameworks, parse, evaluate beside timm, report."""
    require("python -m reference.evaluate")
    import torch  # noqa: F401  (before Paddle, whose libraries would otherwise load first)

    from paddle_model.evaluate.cli import evaluate, report

    args = parse_args(argv)
    result = evaluate(
        args, lambda state: timm_reference(args.variant, state, args.weights, args.reference_weights)
    )
    return report(args, result)


if __name__ == "__main__":
    sys.exit(main())
