"""The result of an evaluation: a JSON-able dict, and the same for people as a few lines."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..datasets import EvalData
from ..variants import get_variant
from .runner import (
    ABS_DIFF,
    BAD,
    PRED,
    REF_MARGIN,
    REF_MAX,
    REF_PRED,
    REF_TOP1,
    REF_TOP5,
    SEEN,
    TOP1,
    TOP5,
    Outcomes,
)


def _percent(count: int, n: int) -> float:
    return 100.0 * count / n if n else 0.0


def summarize(
    data: EvalData,
    out: Outcomes,
    variant: str,
    *,
    reference: dict | None = None,
    failure: Callable[[int], str] | None = None,
    imagenet_labels: bool = True,
) -> dict:
    """The JSON result: counts, accuracies, official numbers, speed, skipped images, reference.

    ``reference`` names the reference model (``{"model": ..., "weights": ...}``) when one ran;
    ``failure(i)`` says why image ``i`` could not be read. The variant's official ImageNet
    accuracy is given only with ``imagenet_labels`` (the labels are ImageNet-1k's); it is None
    otherwise, as it says nothing about other labels.
    """
    v = get_variant(variant)
    seen = out.flags[:, SEEN] == 1
    bad = seen & (out.flags[:, BAD] == 1)
    good = seen & ~bad
    n = int(good.sum())
    skipped = [{"item": item, "reason": reason} for item, reason in data.skipped]
    skipped += [
        {"item": data.samples[i].path, "reason": failure(i) if failure else "not a readable image"}
        for i in np.flatnonzero(bad)
    ]
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
        "official": {"top1": v.top1, "top5": v.top5} if imagenet_labels else None,
        "seconds": round(out.seconds, 3),
        "images_per_s": round(n / out.seconds, 2) if out.seconds > 0 else None,
        "reference": None,
    }
    if reference is not None:
        disagree = np.flatnonzero(good & (out.flags[:, PRED] != out.flags[:, REF_PRED]))
        max_abs = float(out.diffs[good, ABS_DIFF].max()) if n else 0.0
        max_ref = float(out.diffs[good, REF_MAX].max()) if n else 0.0
        result["reference"] = {
            **reference,
            "correct_top1": int(out.flags[good, REF_TOP1].sum()),
            "correct_top5": int(out.flags[good, REF_TOP5].sum()),
            "top1": _percent(int(out.flags[good, REF_TOP1].sum()), n),
            "top5": _percent(int(out.flags[good, REF_TOP5].sum()), n),
            "top1_agreement": _percent(n - len(disagree), n),
            "disagreements": [
                {
                    "item": data.samples[i].path,
                    "paddle": int(out.flags[i, PRED] - 1),
                    "reference": int(out.flags[i, REF_PRED] - 1),
                    "reference_top2_margin": float(out.diffs[i, REF_MARGIN]),
                }
                for i in disagree
            ],
            "max_abs_logit_diff": max_abs,
            "max_rel_logit_diff": max_abs / max_ref if max_ref > 0 else 0.0,
        }
    return result


def table(result: dict) -> str:
    """The result for people: one line per fact."""
    n, official, skipped = result["evaluated"], result["official"], result["skipped"]
    lines = [f"variant     {result['variant']}   weights {result['weights']}"]
    lines.append(
        f"data        {result['data']} ({result['labelling']}): {result['images']} images, {n} evaluated"
    )
    for k in ("1", "5"):
        beside = "" if official is None else f"; official {official['top' + k]}"
        lines.append(f"top-{k}       {result['top' + k]:.3f} %  ({result['correct_top' + k]}/{n}{beside})")
    ref = result["reference"]
    if ref is not None:
        lines.append(
            f"reference   {ref['model']}, {ref['weights']}: "
            f"top-1 {ref['top1']:.3f} %, top-5 {ref['top5']:.3f} %"
        )
        lines.append(
            f"agreement   top-1 {ref['top1_agreement']:.3f} % "
            f"({len(ref['disagreements'])} of {n} differ); max |Δ logit| "
            f"{ref['max_abs_logit_diff']:.3g} ({ref['max_rel_logit_diff']:.3g} of max |logit|)"
        )
        lines += [
            f"  differs   {d['item']}: paddle {d['paddle']}, reference {d['reference']} "
            f"(reference's top-2 margin {d['reference_top2_margin']:.3g})"
            for d in ref["disagreements"][:10]
        ]
    lines.append(f"skipped     {skipped['count']}")
    lines += [f"  skipped   {s['item']}: {s['reason']}" for s in skipped["items"][:10]]
    if skipped["count"] > 10:
        lines.append(f"  ... and {skipped['count'] - 10} more (all listed with --json)")
    processes = "1 process" if result["processes"] == 1 else f"{result['processes']} processes"
    lines.append(
        f"speed       {n} images in {result['seconds']:.1f} s: {result['images_per_s']} images/s "
        f"({processes}, batch {result['batch_size']})"
    )
    return "\n".join(lines)
