"""Convert, verify and package CoaT checkpoints for publishing.

    python -m reference.release SRC_DIR OUT_DIR [--allow-unofficial] [--force] [--eval-results FILE]

For every checkpoint in SRC_DIR (official file names or any name; the variant comes from the
tensors) it writes ``OUT_DIR/<variant>/`` with ``<variant>.pdparams``, ``<variant>.safetensors``,
``config.json`` (architecture, classes and preprocessing, for the Hub page and loaders),
``manifest.json`` (hashes of every other file, parity, preprocessing, published accuracy,
versions) and a model card ``README.md`` whose front matter ``huggingface_hub`` renders, with a
``model-index`` of measured top-1/top-5 when ``--eval-results`` gives ``evaluate --result`` files.
Each folder is a weights location for ``create_model(v, pretrained=True)`` and a Hub repository as
it is (``hf upload``, ``upload_folder``). A variant that fails parity leaves nothing behind; the exit
code is then 1. Two checkpoints of the same variant are refused before anything is written. Needs
torch and timm for the parity check.

"Official" means that the sha256 of the file starts with the 8 hex digits the official
release publishes in its file name (``coat_tiny_c6efc33c.pth``): the full hash is not
published, so that prefix is all there is to compare, and the manifest says so. The full
sha256 of what was converted is recorded beside it.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import sys
import warnings
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from converter.cli import ArgumentParser, command, fail
from converter.errors import CoatError, ConversionError
from converter.files import sha256_file
from converter.manifest import ListedFile, Manifest, Source
from converter.pipeline import convert_checkpoint
from converter.variants import VARIANTS, CoatVariant
from paddle_model.transforms import eval_transform

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".safetensors")


@dataclass
class Entry:
    """What became of one source file."""

    source: Path
    variant: str = "?"
    status: str = "pending"  # released, parity failed, refused
    detail: str = ""
    logits_rel: float = float("nan")
    files: dict[str, str] = field(default_factory=dict)


def find_checkpoints(src_dir: Path) -> list[Path]:
    if not src_dir.is_dir():
        raise ConversionError(f"{src_dir}: no such directory")
    found = sorted(p for p in src_dir.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not found:
        raise ConversionError(
            f"{src_dir}: no checkpoints found (looked for {', '.join(CHECKPOINT_SUFFIXES)} files)"
        )
    return found


def official_variant(sha256: str) -> CoatVariant | None:
    """The variant whose official release file name publishes the first 8 hex digits of this
    sha256, if any (the full hash is not published)."""
    return next((v for v in VARIANTS.values() if sha256.startswith(v.release_sha256)), None)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("coat-paddle", "paddlepaddle", "numpy", "torch", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def official_match(sha256: str, known: CoatVariant | None) -> str | None:
    """What "official" rests on, in words for the manifest (None for other files)."""
    if known is None:
        return None
    return (
        f"the first 8 hex digits of its sha256 equal those published in the official "
        f"{known.name} release's file name ({known.release_sha256}); the full hash is not published"
    )


def _planned_variant(source: Path, sha256: str, allow_unofficial: bool) -> str | None:
    """The variant ``source`` would be released as, from its hash and tensor shapes alone;
    None when it will be refused anyway."""
    from converter.detect import plan_for
    from converter.readers import read_checkpoint

    known = official_variant(sha256)
    if known is None and not allow_unofficial:
        return None
    try:
        shapes = {k: tuple(v.shape) for k, v in read_checkpoint(source).state.items()}
        return plan_for(shapes, known, origin=str(source), name_hint=source.name).variant.name
    except CoatError:
        return None


def _refuse_duplicates(src_dir: Path, planned: dict[Path, str | None]) -> None:
    """Two checkpoints of one variant would release into the same folder: refuse both, first."""
    by_variant: dict[str, list[str]] = {}
    for source, variant in planned.items():
        if variant is not None:
            by_variant.setdefault(variant, []).append(source.name)
    twice = {v: names for v, names in by_variant.items() if len(names) > 1}
    if twice:
        variant, names = next(iter(twice.items()))
        raise ConversionError(
            f"{src_dir}: {' and '.join(names)} are all {variant}; a release holds one checkpoint per "
            "variant, so move the others out of the folder (nothing was written)"
        )


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def _file_table(folder: Path, hashes: dict[str, str]) -> dict[str, ListedFile]:
    """The manifest's file table: sha256 and size of every file in ``folder``; the sha256 is taken
    from ``hashes`` (of this folder's files, hashed before) where it has the name."""
    return {
        p.name: ListedFile(hashes.get(p.name) or sha256_file(p), p.stat().st_size)
        for p in sorted(folder.iterdir())
    }


def _manifest(
    v: CoatVariant,
    source: Path,
    sha256: str,
    official: bool,
    files: dict[str, ListedFile],
    params: int,
    parity: dict,
) -> Manifest:
    return Manifest(
        variant=v.name,
        source=Source(
            file=source.name,
            sha256=sha256,
            official=official,
            official_match=official_match(sha256, v if official else None),
        ),
        files=files,
        params=params,
        parity=parity,
        preprocessing=eval_transform(v).describe(),
        input_size=(3, v.img_size, v.img_size),
        accuracy={
            "dataset": "ImageNet-1k val",
            "top1": v.top1,
            "top5": v.top5,
            "reported_by": "official CoaT release (mlpc-ucsd)",
        },
        license="Apache-2.0",
        versions=_versions(),
    )


def _model_card(m: dict) -> str:
    v, pre = m["variant"], m["preprocessing"]
    if pre["crop_mode"] == "squash":
        how = f"resize to {pre['size']}x{pre['size']} ({pre['interpolation']}), no crop"
    else:
        how = (
            f"resize the shorter side to {pre['resize']} ({pre['interpolation']}), "
            f"centre crop {pre['size']}x{pre['size']}"
        )
    logits = next(o for o in m["parity"]["outputs"] if o["name"] == "logits")
    source = m["source"]
    official = f"yes: {source['official_match']}" if source["official"] else "no"
    return f"""# {v} for PaddlePaddle

CoaT (Co-Scale Conv-Attentional Image Transformers, Xu et al., ICCV 2021), variant `{v}`,
{m["params"] / 1e6:.1f}M parameters, ImageNet-1k classifier, converted from PyTorch with
this project's `convert.py` and verified against timm's implementation.

## Load it

```python
import paddle_model
model = paddle_model.create_model("{v}", pretrained="{v}.pdparams")
model.eval()
```

`{v}.safetensors` holds the same tensors.

## Preprocessing

RGB, {how}, scale to [0, 1], normalise with mean {list(pre["mean"])} and std {list(pre["std"])}
(`paddle_model.transforms.eval_transform("{v}")`).

## Accuracy

ImageNet-1k validation, as published by the authors: top-1 {m["accuracy"]["top1"]}%,
top-5 {m["accuracy"]["top5"]}%.

## Provenance

- source: `{source["file"]}`, sha256 `{source["sha256"]}`, official release: {official}
- parity against timm on a seeded batch at {m["input_size"][1]}x{m["input_size"][2]}: logits max|d|/max|ref|
  {logits["max_rel"]:.2e}, every scale and block within {m["parity"]["tolerance"]:.0e}
- file hashes: see `manifest.json`

## License

Apache-2.0, as the original weights. CoaT by Weijian Xu, Yifan Xu, Tyler Chang and Zhuowen Tu,
https://github.com/mlpc-ucsd/CoaT.
"""


# Where the class names come from: the ImageNet-1k order of timm's ImageNet info, as shipped.
CLASS_NAMES = {
    "dataset": "imagenet-1k",
    "file": "paddle_model/imagenet_classes.tsv",
    "names": "WordNet lemmas in label order (sorted wnids), as timm's ImageNet info lists them",
    "function": "paddle_model.predict.imagenet_classes",
}
EVAL_FIELDS = ("variant", "top1", "top5", "evaluated")
IMAGENET_VAL_IMAGES = 50_000


def hub_config(v: CoatVariant, state: dict) -> dict:
    """``config.json``: what a Hub page or a loader needs to build the model and feed it."""
    pre = eval_transform(v).describe()
    head = state.get("head.weight")
    num_classes = 0 if head is None else int(head.shape[1])
    return {
        "architecture": "CoaT",
        "variant": v.name,
        "library": "coat-paddle (paddle_model.create_model)",
        "num_classes": num_classes,
        "input_size": [3, v.img_size, v.img_size],
        "crop_pct": v.crop_pct,  # as timm states it: the resize is int(img_size / crop_pct)
        "crop_mode": pre["crop_mode"],
        "interpolation": pre["interpolation"],
        "mean": list(pre["mean"]),
        "std": list(pre["std"]),
        "class_names": CLASS_NAMES if num_classes == 1000 else None,
    }


def read_eval_results(paths: list[Path]) -> dict[str, dict]:
    """The ``evaluate --result`` files by variant; one line naming the file if one is unusable."""
    results: dict[str, dict] = {}
    for path in paths:
        try:
            result = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConversionError(f"{path}: cannot read it as an evaluate --result file ({e})") from None
        missing = [k for k in EVAL_FIELDS if not isinstance(result, dict) or k not in result]
        if missing:
            raise ConversionError(f"{path}: not an evaluate --result file (no {', '.join(missing)})")
        if result["variant"] not in VARIANTS:
            raise ConversionError(f"{path}: unknown variant {result['variant']!r}")
        if result["variant"] in results:
            raise ConversionError(f"{path}: a second --eval-results file for {result['variant']}")
        results[result["variant"]] = result
    return results


def check_eval_result(result: dict | None, files: dict[str, str], v: CoatVariant) -> None:
    """Refuse evaluation results measured on other weights than these, when that can be told:
    the evaluated file still exists and its sha256 is none of the released files'."""
    if result is None:
        return
    evaluated = Path(str(result.get("weights", "")))
    if evaluated.is_file() and sha256_file(evaluated) not in files.values():
        raise ConversionError(
            f"--eval-results for {v.name}: {evaluated} is not the file being released "
            "(its sha256 differs); evaluate the released weights"
        )


def model_card(manifest: dict, eval_result: dict | None = None) -> str:
    """The model card: ``huggingface_hub``'s ModelCardData as YAML front matter over the text.

    The model-index holds measured numbers only (from ``eval_result``); the published accuracy
    stays in the text, stated as published. ``base_model`` names timm's Hub copy of the official
    weights, and only when the source is the official release file.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    v = manifest["variant"]
    eval_results = None
    if eval_result is not None:
        n = int(eval_result["evaluated"])
        name = "ImageNet-1k validation" + ("" if n == IMAGENET_VAL_IMAGES else f" ({n} images)")
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type="imagenet-1k",
                dataset_name=name,
                dataset_split="validation",
                metric_type="accuracy",
                metric_name=metric,
                metric_value=float(eval_result[key]),
            )
            for key, metric in (("top1", "top-1 accuracy"), ("top5", "top-5 accuracy"))
        ]
    data = ModelCardData(
        license="apache-2.0",
        library_name="paddlepaddle",
        tags=["image-classification", "paddlepaddle", "coat"],
        datasets=["imagenet-1k"],
        base_model=f"timm/{v}.in1k" if manifest["source"]["official"] else None,
        pipeline_tag="image-classification",
        model_name=v if eval_results else None,  # the model-index's name; no field of its own
        eval_results=eval_results,
    )
    card = ModelCard.from_template(
        data, template_str="---\n{{ card_data }}\n---\n{{ text }}", text=_model_card(manifest)
    )
    return str(card)


def release_one(
    source: Path,
    out_dir: Path,
    allow_unofficial: bool,
    force: bool,
    sha256: str | None = None,
    eval_results: dict[str, dict] | None = None,
) -> Entry:
    """Convert, verify and package one checkpoint (``sha256``: its hash, if already known;
    ``eval_results``: ``evaluate --result`` JSON by variant, for the model card)."""
    from .parity import verify_conversion

    entry = Entry(source)
    sha256 = sha256 or sha256_file(source)
    known = official_variant(sha256)
    if known is None and not allow_unofficial:
        entry.status, entry.detail = (
            "refused",
            (f"sha256 {sha256[:8]} matches no official release; pass --allow-unofficial"),
        )
        return entry
    staging = out_dir / f".{source.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        first = convert_checkpoint(source, staging / "weights.pdparams", variant=known)
        v = VARIANTS[first.variant]
        entry.variant = v.name
        final = out_dir / v.name
        if final.exists() and not force:
            raise ConversionError(f"{final}: already exists; pass --force to replace it")
        (staging / "weights.pdparams").rename(staging / f"{v.name}.pdparams")
        convert_checkpoint(source, staging / f"{v.name}.safetensors", variant=v)
        report = verify_conversion(source, staging / f"{v.name}.pdparams", v)
        entry.logits_rel = report.logits.max_rel
        if not report.ok:
            entry.status = "parity failed"
            entry.detail = f"first divergence at {report.first_divergence}"
            return entry
        from converter.paddle_weights import read_weights

        a, b = read_weights(staging / f"{v.name}.pdparams"), read_weights(staging / f"{v.name}.safetensors")
        if a.keys() != b.keys() or not all(np.array_equal(a[k], b[k]) for k in a):
            raise ConversionError(f"{source}: the .pdparams and .safetensors outputs differ")
        eval_result = (eval_results or {}).get(v.name)
        (staging / "config.json").write_text(json.dumps(hub_config(v, a), indent=2) + "\n")
        files = _file_hashes(staging)
        check_eval_result(eval_result, files, v)
        params = sum(array.size for array in {id(x): x for x in a.values()}.values())  # aliases once
        manifest = _manifest(
            v, source, sha256, known is not None, _file_table(staging, files), params, report.to_dict()
        )
        (staging / "README.md").write_text(model_card(manifest.to_dict(), eval_result))
        manifest = replace(manifest, files=_file_table(staging, files))  # the card included
        (staging / "manifest.json").write_bytes(manifest.to_json())
        files = {name: listed.sha256 for name, listed in manifest.files.items()}
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        entry.status, entry.files = "released", files
        return entry
    except CoatError as e:
        entry.status, entry.detail = "refused", str(e)
        return entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def release(
    src_dir: Path,
    out_dir: Path,
    allow_unofficial: bool = False,
    force: bool = False,
    progress: bool = True,
    eval_results: dict[str, dict] | None = None,
) -> list[Entry]:
    """Release every checkpoint in ``src_dir`` into ``out_dir``; ``eval_results`` maps a variant
    to its ``evaluate --result`` JSON, for the model card's model-index.

    Each source's variant is decided first (hash and shapes, no conversion), so that two
    checkpoints of one variant are refused before anything is written or replaced.
    """
    from tqdm import tqdm

    hashes = {source: sha256_file(source) for source in find_checkpoints(src_dir)}
    _refuse_duplicates(src_dir, {s: _planned_variant(s, h, allow_unofficial) for s, h in hashes.items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for source in tqdm(hashes, desc="releasing", unit="checkpoint", disable=not progress, file=sys.stderr):
        entries.append(release_one(source, out_dir, allow_unofficial, force, hashes[source], eval_results))
    return entries


# the reference extra: timm's model for the parity check, huggingface_hub and jinja2 for the card
REFERENCE_MODULES = ("torch", "torchvision", "timm", "huggingface_hub", "jinja2")


def missing_reference() -> list[str]:
    """The modules of the reference extra that are not installed."""
    return [name for name in REFERENCE_MODULES if importlib.util.find_spec(name) is None]


def summary(entries: list[Entry]) -> str:
    rows = [f"{'source':40} {'variant':22} {'logits max|d|/max|ref|':>23}  status"]
    for e in entries:
        rows.append(
            f"{e.source.name:40} {e.variant:22} {e.logits_rel:>23.3e}  {e.status}"
            + (f": {e.detail}" if e.detail else "")
        )
    return "\n".join(rows)


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m reference.release", description=__doc__.split("\n")[0])
    p.add_argument("src_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--allow-unofficial",
        action="store_true",
        help="release checkpoints that are not the official files (marked official: false)",
    )
    p.add_argument("--force", action="store_true", help="replace variants already in OUT_DIR")
    p.add_argument(
        "--eval-results",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="JSON written by `python -m paddle_model.evaluate --result`, one per variant: "
        "their top-1/top-5 go into the model card's model-index",
    )
    args = p.parse_args(argv)
    missing = missing_reference()
    if missing:
        return fail(
            f"the release needs {', '.join(missing)} (not installed) for the parity check and the "
            "model card: pip install 'coat-paddle[reference]'"
        )
    warnings.filterwarnings("ignore", message="No ccache found")
    eval_results = read_eval_results(args.eval_results)
    entries = release(
        args.src_dir, args.out_dir, args.allow_unofficial, args.force, eval_results=eval_results
    )
    released = {e.variant for e in entries if e.status == "released"}
    for variant in sorted(eval_results.keys() - released):
        print(f"note: the --eval-results of {variant} matched no released checkpoint", file=sys.stderr)
    print(summary(entries))
    if any(e.status == "parity failed" for e in entries):
        return 1
    return 2 if any(e.status == "refused" for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
