"""Classify images with a CoaT: the top-5 classes and their probabilities.

    python -m paddle_model.predict cat.jpg --variant coat_lite_small --weights coat_lite_small.pdparams

Preprocessing is the variant's evaluation transform (the one its accuracy was measured with).
Classes are named where the model knows their names (``model.label_names``: those recorded with
the weights, ImageNet-1k's for a 1000-class head); otherwise they are given by index alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from converter.cli import ArgumentParser, command

from .classes import imagenet_classes, imagenet_wnids
from .datasets import load_image
from .errors import CoatError
from .hub import WEIGHTS_HELP
from .variants import VARIANTS

__all__ = ["predict", "main", "imagenet_classes", "imagenet_wnids", "load_image"]


def predict(model, images, variant: str, top: int = 5) -> list[list[tuple[int, str | None, float]]]:
    """For each PIL image: the ``top`` (class index, name, probability), most likely first.

    The name is the model's ``label_names`` entry, None where the model has none; ``top`` is
    at least 1 and at most the number of classes (:class:`CoatError` otherwise).
    """
    import paddle

    from .transforms import eval_transform

    classes = model.num_classes
    if not 1 <= top <= classes:
        raise CoatError(f"top {top}: give a number of classes from 1 to {classes} (the model's classes)")
    transform = eval_transform(variant)
    batch = np.stack([transform(image) for image in images])
    model.eval()
    with paddle.no_grad():
        probs = paddle.nn.functional.softmax(model(paddle.to_tensor(batch)), axis=-1).numpy()
    names = getattr(model, "label_names", None)
    results = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:top]
        results.append([(int(i), None if names is None else names[i], float(row[i])) for i in best])
    return results


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m paddle_model.predict", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--variant", required=True, choices=list(VARIANTS))
    p.add_argument(
        "--weights",
        required=True,
        help=WEIGHTS_HELP,
    )
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5; at most all)")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top {args.top}: give at least 1")
    from .factory import create_model
    from .hub import resolve_cli_weights
    from .transforms import eval_transform

    transform = eval_transform(args.variant)  # sizes are checked before an image is decoded
    images = [load_image(path, transform) for path in args.images]
    model = create_model(args.variant, pretrained=resolve_cli_weights(args.variant, args.weights))
    results = predict(model, images, args.variant, min(args.top, model.num_classes))
    for path, result in zip(args.images, results):
        print(path)
        for rank, (index, name, prob) in enumerate(result, 1):
            print(f"  {rank}. {prob:7.2%}  {index:4d}" + ("" if name is None else f"  {name}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
