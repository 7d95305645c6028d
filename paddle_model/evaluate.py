"""Top-1/top-5 accuracy of converted CoaT weights on ImageNet-style data, beside timm's if asked.

    python -m paddle_model.evaluate imagenet/val --variant coat_lite_small --weights coat_lite_small.pdparams
    python -m paddle_model.evaluate imagenet --list val_list.txt --variant ... --weights ...
    python -m paddle.distributed.launch --nproc_per_node 2 paddle_model/evaluate.py imagenet/val ...

Preprocessing is the variant's eval transform (``paddle_model.transforms``, equal to timm's).
Under ``paddle.distributed.launch`` every rank takes its shard through
``paddle.io.DistributedBatchSampler``; per-image outcomes are combined with
``paddle.distributed.all_reduce`` and rank 0 prints. Exit codes: 0 done, 1 top-1 below
``--expect-top1``, 2 bad input (unless ``--skip-bad`` leaves bad images out and counts them).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file, as paddle.distributed.launch does
    import sys as _sys
    from pathlib import Path as _Path

    _here = _Path(__file__).resolve().parent
    _sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _here]  # no shadowing
    _sys.path.insert(0, str(_here.parent))
    __package__ = "paddle_model"

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.writers import atomic_write, check_destination

from .datasets import EvalData, read_list, scan_folder
from .errors import CoatError
from .variants import VARIANTS, get_variant

# columns of the per-image outcome table that the ranks combine (element-wise maximum)
SEEN, BAD, TOP1, TOP5, PRED, REF_TOP1, REF_TOP5, REF_PRED = range(8)
ABS_DIFF, REF_MAX, REF_MARGIN = range(3)


@dataclass
class Outcomes:
    """What happened to each image, indexed like the data; an unset entry is 0 (ints) or -1."""

    flags: np.ndarray  # int64 [N, 8]; PRED and REF_PRED hold class + 1
    diffs: np.ndarray  # float64 [N, 3]: max |paddle - timm| logit, max |timm logit|, timm's top-2 margin
    seconds: float = 0.0

    @classmethod
    def empty(cls, n: int) -> "Outcomes":
        return cls(np.zeros((n, 8), np.int64), np.full((n, 3), -1.0))


def _read_weights(weights: Path) -> tuple[dict, int]:
    """The weights and their number of classes; a backbone without classifier is refused."""
    from .weights import read_weights

    state = read_weights(weights)
    if "head.weight" not in state:
        raise CoatError(f"{weights}: these weights have no classifier (head.weight); "
                        "evaluate needs a classification checkpoint")
    return state, int(state["head.weight"].shape[1])


def _load_model(variant: str, state: dict, weights: Path):
    """The Paddle model with ``weights``, its classifier sized as the file's."""
    from .factory import create_model
    from .weights import load_state_dict

    model = create_model(variant, num_classes=int(state["head.weight"].shape[1]))
    load_state_dict(model, state, source=str(weights))
    model.eval()
    return model


def _load_reference(variant: str, paddle_state: dict, weights: Path, source: Path | None):
    """timm's model: from the original PyTorch checkpoint if given, else from the Paddle weights."""
    try:
        import torch  # noqa: F401

        from reference.timm_model import build_timm, load_timm_state, timm_from_checkpoint
    except ImportError as e:
        raise CoatError(f"--reference needs torch and timm ({e}); install the reference extra: "
                        "pip install -e '.[reference]'") from None
    if source is not None:
        return timm_from_checkpoint(source, variant), str(source)
    from converter.reverse import paddle_layout_for, to_torch_layout

    shapes = {k: tuple(v.shape) for k, v in paddle_state.items()}
    _, layout = paddle_layout_for(shapes, get_variant(variant), str(weights))
    model = build_timm(variant, num_classes=int(paddle_state["head.weight"].shape[1]))
    load_timm_state(model, to_torch_layout(paddle_state, layout, str(weights)))
    return model, f"{weights} (reverse-converted)"


def _dataset(data: EvalData, transform):
    import paddle

    from .predict import load_image

    class Images(paddle.io.Dataset):
        """(image [3, H, W], label, index, readable); an unreadable image comes back as zeros."""

        def __len__(self) -> int:
            return len(data.samples)

        def __getitem__(self, index: int):
            sample = data.samples[index]
            try:
                x, ok = transform(load_image(sample.path)), 1
            except CoatError:
                x, ok = np.zeros((3, transform.size, transform.size), np.float32), 0
            return x, np.int64(sample.label), np.int64(index), np.int64(ok)

    return Images()


def _world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside paddle.distributed.launch."""
    import paddle.distributed as dist

    size = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_parallel_env()
    return (dist.get_rank(), dist.get_world_size()) if size > 1 else (0, 1)


def _any_rank(flag: bool, world: int) -> bool:
    """True on every rank when ``flag`` is true on one: lets all ranks stop together."""
    if world == 1:
        return flag
    import paddle
    import paddle.distributed as dist

    t = paddle.to_tensor([int(flag)], dtype="int64")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _combine(out: Outcomes, world: int) -> Outcomes:
    """Every rank's outcomes merged: each image was set by the rank that evaluated it."""
    if world == 1:
        return out
    import paddle
    import paddle.distributed as dist

    merged = []
    for array in (out.flags, out.diffs, np.array([out.seconds])):
        t = paddle.to_tensor(array)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        merged.append(t.numpy())
    return Outcomes(merged[0], merged[1], float(merged[2][0]))


def run(data: EvalData, model, variant: str, *, batch_size: int = 32, workers: int = 2,
        reference=None, skip_bad: bool = False, progress: bool = True) -> Outcomes:
    """Evaluate on this rank's shard and return everyone's outcomes (identical on all ranks).

    Without ``skip_bad`` all ranks stop after the batch in which any rank met an unreadable
    image. DistributedBatchSampler pads the last shard with repeats of the first images; a
    repeat writes the same entry again, so every image counts once.
    """
    import paddle

    from .transforms import eval_transform

    rank, world = _world()
    dataset = _dataset(data, eval_transform(variant))
    sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=batch_size, num_replicas=world,
                                                rank=rank, shuffle=False, drop_last=False)
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
    out = Outcomes.empty(len(dataset))
    bar = _progress(len(dataset), enabled=progress and rank == 0)
    start = time.perf_counter()
    for images, labels, indices, ok in loader:
        labels, indices, ok = labels.numpy(), indices.numpy(), ok.numpy().astype(bool)
        out.flags[indices, SEEN] = 1
        out.flags[indices[~ok], BAD] = 1
        if ok.any():
            x = images.numpy()[ok]
            _score(out, indices[ok], labels[ok], x, model, reference)
        if bar is not None:
            bar.update(min(len(indices) * world, bar.total - bar.n))
        if not skip_bad and _any_rank(not ok.all(), world):  # skip_bad is the same on every rank
            break
    out.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return _combine(out, world)


def _score(out: Outcomes, indices, labels, x: np.ndarray, model, reference) -> None:
    import paddle

    with paddle.no_grad():
        logits = model(paddle.to_tensor(x)).numpy()
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    out.flags[indices, TOP1] = top5[:, 0] == labels
    out.flags[indices, TOP5] = (top5 == labels[:, None]).any(axis=1)
    out.flags[indices, PRED] = top5[:, 0] + 1
    if reference is None:
        return
    import torch

    with torch.no_grad():
        ref = reference(torch.from_numpy(x)).numpy().astype(np.float64)
    ref_top5 = np.argsort(-ref, axis=1, kind="stable")[:, :5]
    out.flags[indices, REF_TOP1] = ref_top5[:, 0] == labels
    out.flags[indices, REF_TOP5] = (ref_top5 == labels[:, None]).any(axis=1)
    out.flags[indices, REF_PRED] = ref_top5[:, 0] + 1
    rows = np.arange(len(ref))
    out.diffs[indices, ABS_DIFF] = np.abs(logits - ref).max(axis=1)
    out.diffs[indices, REF_MAX] = np.abs(ref).max(axis=1)
    out.diffs[indices, REF_MARGIN] = ref[rows, ref_top5[:, 0]] - ref[rows, ref_top5[:, 1]]


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, smoothing=0.05, mininterval=1.0)


def _percent(count: int, n: int) -> float:
    return 100.0 * count / n if n else 0.0


def summarize(data: EvalData, out: Outcomes, variant: str, *, reference_name: str | None = None,
              failure=None) -> dict:
    """The JSON result: counts, accuracies, official numbers, speed, skipped images, reference."""
    v = get_variant(variant)
    seen = out.flags[:, SEEN] == 1
    bad = seen & (out.flags[:, BAD] == 1)
    good = seen & ~bad
    n = int(good.sum())
    skipped = [{"item": item, "reason": reason} for item, reason in data.skipped]
    skipped += [{"item": data.samples[i].path, "reason": failure(i) if failure else "not a readable image"}
                for i in np.flatnonzero(bad)]
    result = {
        "variant": variant,
        "data": str(data.root),
        "labelling": data.labelling,
        "images": len(data.samples),
        "evaluated": n,
        "skipped": {"count": len(skipped), "items": skipped},
        "correct_top1": int(out.flags[good, TOP1].sum()),
        "correct_top5": int(out.flags[good, TOP5].sum()),
        "top1": _percent(int(out.flags[good, TOP1].sum()), n),
        "top5": _percent(int(out.flags[good, TOP5].sum()), n),
        "official": {"top1": v.top1, "top5": v.top5},
        "seconds": round(out.seconds, 3),
        "images_per_s": round(n / out.seconds, 2) if out.seconds > 0 else None,
        "reference": None,
    }
    if reference_name is not None:
        disagree = np.flatnonzero(good & (out.flags[:, PRED] != out.flags[:, REF_PRED]))
        max_abs = float(out.diffs[good, ABS_DIFF].max()) if n else 0.0
        max_ref = float(out.diffs[good, REF_MAX].max()) if n else 0.0
        result["reference"] = {
            "model": f"timm {_timm_version()}",
            "weights": reference_name,
            "correct_top1": int(out.flags[good, REF_TOP1].sum()),
            "correct_top5": int(out.flags[good, REF_TOP5].sum()),
            "top1": _percent(int(out.flags[good, REF_TOP1].sum()), n),
            "top5": _percent(int(out.flags[good, REF_TOP5].sum()), n),
            "top1_agreement": _percent(n - len(disagree), n),
            "disagreements": [
                {"item": data.samples[i].path, "paddle": int(out.flags[i, PRED] - 1),
                 "reference": int(out.flags[i, REF_PRED] - 1),
                 "reference_top2_margin": float(out.diffs[i, REF_MARGIN])} for i in disagree],
            "max_abs_logit_diff": max_abs,
            "max_rel_logit_diff": max_abs / max_ref if max_ref > 0 else 0.0,
        }
    return result


def _timm_version() -> str:
    import timm

    return timm.__version__


def table(result: dict) -> str:
    """The result for people: one line per fact."""
    n, official, skipped = result["evaluated"], result["official"], result["skipped"]
    lines = [f"variant     {result['variant']}   weights {result['weights']}"]
    lines.append(f"data        {result['data']} ({result['labelling']}): "
                 f"{result['images']} images, {n} evaluated")
    for k in ("1", "5"):
        lines.append(f"top-{k}       {result['top' + k]:.3f} %  "
                     f"({result['correct_top' + k]}/{n}; official {official['top' + k]})")
    ref = result["reference"]
    if ref is not None:
        lines.append(f"reference   {ref['model']}, {ref['weights']}: "
                     f"top-1 {ref['top1']:.3f} %, top-5 {ref['top5']:.3f} %")
        lines.append(f"agreement   top-1 {ref['top1_agreement']:.3f} % "
                     f"({len(ref['disagreements'])} of {n} differ); max |Δ logit| "
                     f"{ref['max_abs_logit_diff']:.3g} ({ref['max_rel_logit_diff']:.3g} of max |logit|)")
        lines += [f"  differs   {d['item']}: paddle {d['paddle']}, timm {d['reference']} "
                  f"(timm's top-2 margin {d['reference_top2_margin']:.3g})" for d in ref["disagreements"][:10]]
    lines.append(f"skipped     {skipped['count']}")
    lines += [f"  skipped   {s['item']}: {s['reason']}" for s in skipped["items"][:10]]
    if skipped["count"] > 10:
        lines.append(f"  ... and {skipped['count'] - 10} more (all listed with --json)")
    lines.append(f"speed       {n} images in {result['seconds']:.1f} s: {result['images_per_s']} images/s "
                 f"({_processes(result['processes'])}, batch {result['batch_size']})")
    return "\n".join(lines)


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _failure_reason(path: str) -> str:
    """Why ``path`` could not be read, asked again in this process (workers pass no strings)."""
    from .predict import load_image

    try:
        load_image(path)
    except CoatError as e:
        return str(e).removeprefix(f"{path}: ")
    return "could not be read during the run"


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m paddle_model.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="ImageFolder root (ROOT/<class>/<image>), or with --list "
                                           "the folder the list's paths start from")
    p.add_argument("--variant", required=True, choices=list(VARIANTS))
    p.add_argument("--weights", required=True,
                   help=".pdparams or .safetensors file; 'pretrained' for the variant's published weights, "
                        "'hf-hub:<repo_id>' for a release folder on the Hugging Face Hub")
    p.add_argument("--list", type=Path, help="file list: '<relative path> <label>' per line")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data-loading processes per rank (0: load in the main process)")
    p.add_argument("--limit", type=int, help="evaluate only N images, spread evenly over the data")
    p.add_argument("--reference", action="store_true",
                   help="also run timm's model on the same batches (needs torch and timm)")
    p.add_argument("--reference-weights", type=Path,
                   help="the original PyTorch checkpoint for --reference (default: the Paddle weights, "
                        "converted back)")
    p.add_argument("--expect-top1", type=float, help="exit 1 when top-1 is more than --tolerance below this")
    p.add_argument("--tolerance", type=float, default=0.1, help="in percentage points (default 0.1)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave unreadable images, empty class folders and bad list lines out, and count them")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--result", type=Path, help="also write the JSON result to this file")
    p.add_argument("--force", action="store_true", help="replace an existing --result file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.reference_weights is not None:
        args.reference = True
    if args.batch_size < 1 or args.workers < 0:
        p.error("--batch-size must be at least 1 and --workers at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")
    try:
        if args.result is not None:  # refused before the run, not after it
            check_destination(args.result, args.force, (".json",))
        from .hub import resolve_cli_weights

        args.weights = resolve_cli_weights(args.variant, args.weights)
        state, num_classes = _read_weights(args.weights)
        if args.list is not None:
            data = read_list(args.list, args.data, num_classes, args.skip_bad)
        else:
            from .predict import imagenet_wnids

            data = scan_folder(args.data, num_classes, args.skip_bad,
                               wnids=imagenet_wnids() if num_classes == 1000 else None)
        data = data.limit(args.limit)
        model = _load_model(args.variant, state, args.weights)
        reference = reference_name = None
        if args.reference:
            reference, reference_name = _load_reference(args.variant, state, args.weights,
                                                        args.reference_weights)
        del state
        out = run(data, model, args.variant, batch_size=args.batch_size, workers=args.workers,
                  reference=reference, skip_bad=args.skip_bad, progress=not args.quiet)
        rank, world = _world()
        bad = np.flatnonzero(out.flags[:, BAD] == 1)
        if len(bad) and not args.skip_bad:
            path = data.samples[bad[0]].path
            raise CoatError(f"{path}: {_failure_reason(path)} (fix the data, or pass --skip-bad to leave it out)")
        result = summarize(data, out, args.variant, reference_name=reference_name,
                           failure=lambda i: _failure_reason(data.samples[i].path))
        if result["evaluated"] == 0:
            raise CoatError(f"{args.data}: no image could be evaluated")
    except CoatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update(weights=str(args.weights), list=None if args.list is None else str(args.list),
                  processes=world, batch_size=args.batch_size, expect_top1=args.expect_top1,
                  tolerance=args.tolerance, passed=None)
    if args.expect_top1 is not None:
        result["passed"] = result["top1"] >= args.expect_top1 - args.tolerance
    if rank != 0:
        return 0 if result["passed"] is not False else 1
    print(json.dumps(result, indent=2) if args.json else table(result))
    if args.result is not None:
        try:
            check_destination(args.result, args.force, (".json",))
            atomic_write(args.result, lambda f: f.write(json.dumps(result, indent=2).encode() + b"\n"))
        except (CoatError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if result["passed"] is False:
        print(f"error: top-1 {result['top1']:.3f} % is more than {args.tolerance} points below the "
              f"expected {args.expect_top1}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
