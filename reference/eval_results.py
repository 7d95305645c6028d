"""The ``evaluate --result`` files that ``release --eval-results`` puts into a model card,
validated before any work against the schema the card relies on.

A result file comes from the user (or from anywhere): it is read only if it is a regular file of
bounded size, parsed as JSON of bounded nesting and number length, and its fields are checked
for type and range, each failure one :class:`~converter.errors.ConversionError` naming the file and
the field. What passes is a :class:`MeasuredAccuracy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ConversionError
from converter.files import load_json, read_bounded, sha256_file
from converter.variants import VARIANTS, CoatVariant


@dataclass(frozen=True)
class MeasuredAccuracy:
    """One ``evaluate --result`` file, validated: the numbers the model card's model-index shows."""

    path: Path
    variant: str
    top1: float  # percent, 0..100
    top5: float  # percent, top1..100
    evaluated: int  # images
    weights: str | None  # the evaluated weights file, as the result names it


MAX_EVAL_BYTES = 32 << 20  # an ImageNet result lists every skipped image and disagreement
MAX_JSON_DEPTH = 16  # evaluate writes 4 levels
MAX_NUMBER_CHARS = 40  # a float's repr is at most 24


def _percent(path: Path, result: dict, key: str, low: float = 0.0) -> float:
    value = result[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConversionError(f"{path}: {key} is {_show(value)}; it must be a percentage (a number)")
    if not low <= value <= 100:
        raise ConversionError(f"{path}: {key} is {value}; it must lie between {low:g} and 100")
    return float(value)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def read_eval_result(path: Path) -> MeasuredAccuracy:
    """One ``evaluate --result`` file, validated against the schema the card relies on: a regular
    file of at most ``MAX_EVAL_BYTES``, JSON nested at most ``MAX_JSON_DEPTH`` deep with number
    literals of at most ``MAX_NUMBER_CHARS`` characters, ``variant`` a known variant, ``top1``
    and ``top5`` finite percentages (top-5 at least top-1), ``evaluated`` a whole number >= 1.
    Anything else is a :class:`ConversionError` naming the file and the field."""
    what = "an evaluate --result file"
    data = read_bounded(path, MAX_EVAL_BYTES, ConversionError, what)
    if not data:
        raise ConversionError(f"{path}: is empty")
    lead = f"{path}: cannot read it as {what}"
    result = load_json(data, lead, ConversionError, MAX_JSON_DEPTH, MAX_NUMBER_CHARS)
    if not isinstance(result, dict):
        raise ConversionError(f"{path}: not {what} (a JSON object)")
    missing = [k for k in ("variant", "top1", "top5", "evaluated") if k not in result]
    if missing:
        raise ConversionError(f"{path}: not {what} (no {', '.join(missing)})")
    variant = result["variant"]
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ConversionError(f"{path}: unknown variant {_show(variant)}; one of {', '.join(VARIANTS)}")
    top1 = _percent(path, result, "top1")
    top5 = _percent(path, result, "top5", low=top1)
    evaluated = result["evaluated"]
    if isinstance(evaluated, bool) or not isinstance(evaluated, int) or evaluated < 1:
        raise ConversionError(f"{path}: evaluated is {_show(evaluated)}; it must be a count of images (>= 1)")
    weights = result.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise ConversionError(f"{path}: weights is {_show(weights)}; it must be a file name")
    return MeasuredAccuracy(path, variant, top1, top5, evaluated, weights)


def read_eval_results(paths: list[Path]) -> dict[str, MeasuredAccuracy]:
    """The ``evaluate --result`` files by variant, each validated (:func:`read_eval_result`);
    a second file for one variant is refused."""
    results: dict[str, MeasuredAccuracy] = {}
    for path in paths:
        result = read_eval_result(path)
        if result.variant in results:
            raise ConversionError(f"{path}: a second --eval-results file for {result.variant}")
        results[result.variant] = result
    return results


def check_eval_result(result: MeasuredAccuracy | None, files: dict[str, str], v: CoatVariant) -> None:
    """Refuse evaluation results measured on other weights than these, when that can be told:
    the evaluated file still exists and its sha256 is none of the released files'."""
    if result is None or result.weights is None:
        return
    evaluated = Path(result.weights)
    if evaluated.is_file() and sha256_file(evaluated) not in files.values():
        raise ConversionError(
            f"--eval-results for {v.name}: {evaluated} is not the file being released "
            "(its sha256 differs); evaluate the released weights"
        )
