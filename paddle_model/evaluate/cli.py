"""The command line of ``python -m paddle_model.evaluate`` (console script ``coat-evaluate``).

:func:`build_parser` and :func:`evaluate` are shared with ``python -m reference.evaluate``,
which adds timm's CoaT as a reference beside the Paddle model.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from converter.cli import ArgumentParser, command, fail
from converter.layout import num_classes_in
from converter.writers import atomic_write, check_destination

from ..classes import imagenet_wnids
from ..datasets import (
    SORTED_FOLDERS,
    EvalData,
    EvalImages,
    read_class_map,
    read_list,
    scan_folder,
)
from ..errors import CoatError
from ..hub import WEIGHTS_HELP
from ..variants import VARIANTS
from .report import summarize, table
from .runner import BAD, Reference, run, world

DESCRIPTION = "Top-1/top-5 accuracy of converted CoaT weights on ImageNet-style data."
# the reference side makes its model from the Paddle state dict: (callable, {"model", "weights"})
ReferenceFactory = Callable[[dict], tuple[Reference, dict]]


def build_parser(prog: str, description: str = DESCRIPTION) -> ArgumentParser:
    """The options of every evaluate command."""
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "data",
        type=Path,
        help="ImageFolder root (ROOT/<class>/<image>), or with --list the folder the list's paths start from",
    )
    p.add_argument("--variant", required=True, choices=list(VARIANTS))
    p.add_argument(
        "--weights",
        required=True,
        help=WEIGHTS_HELP,
    )
    p.add_argument("--list", type=Path, help="file list: '<relative path> <label>' per line")
    p.add_argument(
        "--class-map",
        type=Path,
        help="labels of the class folders: '<folder name> <label>' per line (needed for a "
        "1000-class model when the folders are not ImageNet wnids)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="data-loading processes per rank (0: load in the main process)",
    )
    p.add_argument("--limit", type=int, help="evaluate only N images, spread evenly over the data")
    p.add_argument("--expect-top1", type=float, help="exit 1 when top-1 is more than --tolerance below this")
    p.add_argument("--tolerance", type=float, default=0.1, help="in percentage points (default 0.1)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable images, empty class folders and bad list lines out, and count them",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--result", type=Path, help="also write the JSON result to this file")
    p.add_argument("--force", action="store_true", help="replace an existing --result file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_args(p: ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.batch_size < 1 or args.workers < 0:
        p.error("--batch-size must be at least 1 and --workers at least 0")
    if args.list is not None and args.class_map is not None:
        p.error("--class-map labels class folders; a --list file carries its own labels: give one of them")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser("python -m paddle_model.evaluate")
    moved = "use python -m reference.evaluate, which runs timm's CoaT beside the Paddle model"
    p.add_argument("--reference", action="store_true", help=moved)
    p.add_argument("--reference-weights", type=Path, help=moved)
    args = p.parse_args(argv)
    if args.reference or args.reference_weights is not None:
        p.error(
            "--reference runs timm beside the Paddle model, which is the reference side's "
            "command: python -m reference.evaluate (same options; needs torch and timm)"
        )
    return check_args(p, args)


def read_classifier(weights: Path) -> tuple[dict, int]:
    """The weights and their number of classes; a backbone without classifier is refused."""
    from ..weights import read_weights

    state = read_weights(weights)
    num_classes = num_classes_in(state)
    if not num_classes:
        raise CoatError(
            f"{weights}: these weights have no classifier (head.weight); "
            "evaluate needs a classification checkpoint"
        )
    return state, num_classes


def list_data(args: argparse.Namespace, num_classes: int) -> EvalData:
    """The samples the options name: a file list or an ImageFolder tree, limited if asked."""
    if args.list is not None:
        data = read_list(args.list, args.data, num_classes, args.skip_bad)
    else:
        class_map = None if args.class_map is None else read_class_map(args.class_map, num_classes)
        wnids = imagenet_wnids() if num_classes == len(imagenet_wnids()) else None
        data = scan_folder(args.data, num_classes, args.skip_bad, wnids=wnids, class_map=class_map)
    return data.limit(args.limit)


def load_model(variant: str, weights: Path, state: dict):
    """The Paddle model with the weights ``state`` read from ``weights``, as ``create_model``
    (and so predict and export) builds it: the classifier sized as the file's. In eval mode."""
    from ..factory import model_from_state

    model = model_from_state(variant, state, weights)
    model.eval()
    return model


def evaluate(args: argparse.Namespace, reference_for: ReferenceFactory | None = None) -> dict:
    """Everything the options ask for, up to the result (the same dict on every rank).

    Raises CoatError for bad input: a ``--result`` that would be refused (before the run, not
    after it), unusable weights or data, and without ``--skip-bad`` the first unreadable image.
    """
    from ..hub import resolve_cli_weights
    from ..transforms import eval_transform

    if args.result is not None:
        check_destination(args.result, args.force, (".json",))
    args.weights = resolve_cli_weights(args.variant, args.weights)
    state, num_classes = read_classifier(args.weights)
    data = list_data(args, num_classes)
    model = load_model(args.variant, args.weights, state)  # the file is read once
    reference, about = reference_for(state) if reference_for is not None else (None, None)
    del state
    dataset = EvalImages(data.samples, eval_transform(args.variant))
    out = run(
        dataset,
        model,
        batch_size=args.batch_size,
        workers=args.workers,
        reference=reference,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
    )
    bad = [int(i) for i in (out.flags[:, BAD] == 1).nonzero()[0]]
    if bad and not args.skip_bad:
        raise CoatError(
            f"{data.samples[bad[0]].path}: {dataset.failure(bad[0])} "
            "(fix the data, or pass --skip-bad to leave it out)"
        )
    imagenet_labels = num_classes == len(imagenet_wnids()) and data.labelling != SORTED_FOLDERS
    result = summarize(
        data, out, args.variant, reference=about, failure=dataset.failure, imagenet_labels=imagenet_labels
    )
    if result["evaluated"] == 0:
        raise CoatError(f"{args.data}: no image could be evaluated")
    result.update(
        weights=str(args.weights),
        list=None if args.list is None else str(args.list),
        processes=world()[1],
        batch_size=args.batch_size,
        expect_top1=args.expect_top1,
        tolerance=args.tolerance,
        passed=None,
    )
    if args.expect_top1 is not None:
        result["passed"] = result["top1"] >= args.expect_top1 - args.tolerance
    return result


def report(args: argparse.Namespace, result: dict) -> int:
    """Print the result and write ``--result`` (rank 0 only); the exit code: 1 when top-1 is
    below ``--expect-top1``."""
    rank = world()[0]
    if rank == 0:
        print(json.dumps(result, indent=2) if args.json else table(result))
        if args.result is not None:
            check_destination(args.result, args.force, (".json",))
            text = json.dumps(result, indent=2).encode() + b"\n"
            try:
                atomic_write(args.result, lambda f: f.write(text), args.force)
            except OSError as e:
                raise CoatError(f"{args.result}: cannot be written ({e.strerror or e})") from None
    if result["passed"] is not False:
        return 0
    if rank != 0:
        return 1
    return fail(
        f"top-1 {result['top1']:.3f} % is more than {args.tolerance} points below the "
        f"expected {args.expect_top1}",
        1,
    )


@command
def main(argv: list[str] | None = None) -> int:
    """``python -m paddle_model.evaluate``: parse, evaluate, report."""
    args = parse_args(argv)
    return report(args, evaluate(args))
