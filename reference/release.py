"""Convert, verify and package CoaT checkpoints for publishing.

    python -m reference.release SRC_DIR OUT_DIR [--allow-unofficial] [--force] [--eval-results FILE]

For every checkpoint in SRC_DIR (official file names or any name; the variant comes from the
tensors) it writes ``OUT_DIR/<variant>/`` with ``<variant>.pdparams``, ``<variant>.safetensors``,
``config.json`` (architecture, classes and preprocessing, for the Hub page and loaders),
``manifest.json`` (hashes of every other file, parity, preprocessing, published accuracy,
versions) and a model card ``README.md`` whose front matter ``huggingface_hub`` renders, with a
``model-index`` of measured top-1/top-5 when ``--eval-results`` gives ``evaluate --result`` files.
Each folder is a weights location for ``create_model(v, pretrained=True)`` and a Hub repository as
it is (``hf upload``, ``upload_folder``). Needs torch and timm for the parity check.

The pipeline is a list of named steps, each a function below: :func:`plan` (hash each source
once, decide its variant from the tensors, refuse the whole run before anything is written:
unofficial files without ``--allow-unofficial``, two checkpoints of one variant, unusable file
names; :mod:`reference.eval_results` validates those files before it), then per checkpoint in a
private staging folder :func:`convert` -> :func:`verify` (parity against timm) -> :func:`hash_file`
-> :func:`write_card` -> :func:`write_manifest` -> :func:`publish` (rename into place). A variant
that fails parity leaves nothing behind (exit code 1); the staging folder is removed whatever
happens (``finally``), interrupts included.

"Official" means that the sha256 of the file starts with the 8 hex digits the official
release publishes in its file name (``coat_tiny_c6efc33c.pth``): the full hash is not
published, so that prefix is all there is to compare, and the manifest says so. The full
sha256 of what was converted is recorded beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import sys
from dataclasses import dataclass, field, replace
from enum import Enum
from importlib import metadata
from pathlib import Path

import numpy as np

from converter.cli import ArgumentParser, command
from converter.errors import CoatError, ConversionError
from converter.files import sha256_file
from converter.layout import num_classes_in
from converter.manifest import ListedFile, Manifest, Source
from converter.paddle_weights import LABEL_NAMES
from converter.pipeline import convert_checkpoint
from converter.variants import VARIANTS, CoatVariant
from converter.writers import atomic_write

from . import REFERENCE_MODULES, require
from .eval_results import MeasuredAccuracy, check_eval_result, read_eval_results

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".safetensors")


def eval_transform(v: CoatVariant):
    """:func:`paddle_model.transforms.eval_transform`, imported when first needed: so that
    ``python -m reference.release`` without Paddle says so in one line (:func:`reference.require`)
    instead of failing at import."""
    from paddle_model.transforms import eval_transform as transform

    return transform(v)


class Status(Enum):
    """What became of one source file."""

    RELEASED = "released"
    PARITY_FAILED = "parity failed"  # exit code 1: the conversion does not hold
    REFUSED = "refused"  # exit code 2: the input cannot be released as it is


@dataclass
class Entry:
    """What became of one source file: its status, why (``detail``), the logits' parity and the
    released files' sha256 by name."""

    source: Path
    variant: str = "-"
    status: Status = Status.REFUSED
    detail: str = ""
    logits_rel: float = float("nan")
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Planned:
    """One source as :func:`plan` decided it: its sha256 (computed once), the official release
    whose published hash prefix it matches (``known``, None for another file), and its variant
    (None when it cannot be released, ``refusal`` saying why)."""

    source: Path
    sha256: str
    known: CoatVariant | None
    variant: CoatVariant | None
    refusal: str = ""

    @property
    def official(self) -> bool:
        """Whether the source is an official release file (by its published hash prefix)."""
        return self.known is not None


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


# --- step: plan (before anything is written) ----------------------------------------------

# A file name goes into the card's Markdown and every message: no control characters in it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plan_source(source: Path, sha256: str, known: CoatVariant | None) -> Planned:
    """The variant ``source`` would be released as, from its tensor shapes alone (no conversion)
    and ``known``, the official release its sha256 matches (:func:`official_variant`); a source
    that cannot be released is planned with its ``refusal``."""
    from converter.detect import plan_for
    from converter.readers import read_checkpoint

    try:
        shapes = {k: tuple(v.shape) for k, v in read_checkpoint(source).state.items()}
        variant = plan_for(shapes, known, origin=str(source), name_hint=source.name).variant
    except CoatError as e:
        return Planned(source, sha256, known, None, str(e))
    return Planned(source, sha256, known, variant)


def _unofficial(source: Path, sha256: str) -> str:
    return (
        f"{source.name}: sha256 {sha256[:8]} matches no official release; pass --allow-unofficial "
        "to release it marked official: false"
    )


def plan(src_dir: Path, allow_unofficial: bool) -> list[Planned]:
    """Every checkpoint in ``src_dir``, planned; :class:`ConversionError` (nothing written, nothing
    converted) for what would make the whole release wrong: a file name with control characters,
    an unofficial file without ``allow_unofficial``, two checkpoints of one variant (both would
    release into the same folder), no file that can be released at all."""
    sources = find_checkpoints(src_dir)
    for source in sources:
        if _CONTROL.search(source.name):
            raise ConversionError(
                f"{src_dir}: the file name {source.name!r} holds control characters; rename it "
                "(nothing was written)"
            )
    planned = []
    for source in sources:
        sha256 = sha256_file(source)
        known = official_variant(sha256)
        if known is None and not allow_unofficial:
            raise ConversionError(f"{_unofficial(source, sha256)} (nothing was written)")
        planned.append(plan_source(source, sha256, known))
    _refuse_duplicates(src_dir, planned)
    if all(p.variant is None for p in planned):
        more = f" (and {len(planned) - 1} more that cannot be released)" if len(planned) > 1 else ""
        raise ConversionError(f"nothing to release: {planned[0].refusal}{more}; nothing was written")
    return planned


def _refuse_duplicates(src_dir: Path, planned: list[Planned]) -> None:
    """Two checkpoints of one variant would release into the same folder: refuse both, first."""
    by_variant: dict[str, list[str]] = {}
    for p in planned:
        if p.variant is not None:
            by_variant.setdefault(p.variant.name, []).append(p.source.name)
    twice = {v: names for v, names in by_variant.items() if len(names) > 1}
    if twice:
        variant, names = next(iter(twice.items()))
        raise ConversionError(
            f"{src_dir}: {' and '.join(names)} are all {variant}; a release holds one checkpoint per "
            "variant, so move the others out of the folder (nothing was written)"
        )


IMAGENET_VAL_IMAGES = 50_000


# --- steps: card and manifest -------------------------------------------------------------


def markdown_text(text: str) -> str:
    """``text`` shown as it is in Markdown: every ASCII punctuation character backslash-escaped
    (CommonMark's rule), so that a file name cannot add links, emphasis, HTML or headings."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


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
    """The card's Markdown body; the source's file name (the one text in it a user chose) escaped."""
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

- source: {markdown_text(source["file"])}, sha256 `{source["sha256"]}`, official release: {official}
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


def hub_config(v: CoatVariant, state: dict) -> dict:
    """``config.json``: what a Hub page or a loader needs to build the model and feed it.

    A 1000-class release names its classes (ImageNet-1k's) under ``label_names``, the key that
    coat-train writes and :func:`converter.paddle_weights.read_label_names` reads beside a
    weights file; ``class_names`` says where those names come from, for the Hub card."""
    pre = eval_transform(v).describe()
    num_classes = num_classes_in(state)
    config = {
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
    if num_classes == 1000:
        from paddle_model.classes import imagenet_classes  # paddle_model needs Paddle: imported here

        config[LABEL_NAMES] = imagenet_classes()
    return config


def model_card(manifest: dict, measured: MeasuredAccuracy | None = None) -> str:
    """The model card: ``huggingface_hub``'s ModelCardData as YAML front matter over the text.

    The model-index holds measured numbers only (from ``measured``); the published accuracy
    stays in the text, stated as published. ``base_model`` names timm's Hub copy of the official
    weights, and only when the source is the official release file.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    v = manifest["variant"]
    eval_results = None
    if measured is not None:
        n = measured.evaluated
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
                metric_value=value,
            )
            for value, metric in ((measured.top1, "top-1 accuracy"), (measured.top5, "top-5 accuracy"))
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


# --- the steps of one checkpoint, in a private staging folder -----------------------------


def convert(p: Planned, staging: Path) -> dict[str, np.ndarray]:
    """Write ``<variant>.pdparams`` and ``<variant>.safetensors`` of ``p`` into ``staging``
    (the variant as planned, checked again by the conversion; the source is not hashed again)
    and return their tensors, refusing outputs that differ."""
    from converter.paddle_weights import read_weights

    v = p.variant
    written = []
    for suffix in (".pdparams", ".safetensors"):
        written.append(staging / f"{v.name}{suffix}")
        convert_checkpoint(p.source, written[-1], variant=v, hash_source=False)
    a, b = (read_weights(path) for path in written)
    if a.keys() != b.keys() or not all(np.array_equal(a[k], b[k]) for k in a):
        raise ConversionError(f"{p.source}: the .pdparams and .safetensors outputs differ")
    return a


def verify(p: Planned, weights: Path):
    """Full parity of timm's model with the source against the Paddle model with ``weights``
    (:func:`reference.parity.verify_conversion`): the report, ``ok`` or not."""
    from .parity import verify_conversion

    return verify_conversion(p.source, weights, p.variant)


def hash_file(path: Path, data: bytes | None = None) -> str:
    """The sha256 of a released file: of ``data``, the bytes just written there, when given
    (nothing is read back), else of the file, streamed."""
    return hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)


def _write(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` (UTF-8, all or nothing); its sha256."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))
    return hash_file(path, data)


def write_card(staging: Path, manifest: dict, measured: MeasuredAccuracy | None) -> str:
    """``README.md``, the model card of ``manifest`` (with ``measured``'s model-index); its sha256."""
    return _write(staging / "README.md", model_card(manifest, measured))


def write_manifest(staging: Path, manifest: Manifest) -> None:
    """``manifest.json``, last: it lists the sha256 and size of every other file."""
    data = manifest.to_json()
    atomic_write(staging / "manifest.json", lambda f: f.write(data))


def publish(staging: Path, final: Path, force: bool) -> None:
    """Rename the complete ``staging`` folder to ``final``. An existing ``final`` is replaced only
    with ``force``: it is renamed aside first, and removed once the new folder is in place (a
    symlink is removed itself, never what it points to)."""
    if not (final.exists() or final.is_symlink()):
        os.rename(staging, final)
        return
    if not force:
        raise _exists(final)
    old = final.with_name(f".{os.getpid()}-{os.urandom(4).hex()}.replaced")
    os.rename(final, old)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(old, final)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _exists(final: Path) -> ConversionError:
    return ConversionError(f"{final}: already exists; pass --force to replace it")


def release_one(
    p: Planned,
    out_dir: Path,
    force: bool = False,
    measured: dict[str, MeasuredAccuracy] | None = None,
) -> Entry:
    """Release one planned checkpoint into ``out_dir/<variant>`` through the steps above, in a
    staging folder with a short name of its own (never derived from the source's name), which is
    removed whatever happens. ``measured``: validated ``evaluate --result`` files by variant."""
    entry = Entry(p.source)
    if p.variant is None:
        entry.detail = p.refusal
        return entry
    v = p.variant
    entry.variant = v.name
    final = out_dir / v.name
    if (final.exists() or final.is_symlink()) and not force:  # before any work; publish checks again
        entry.detail = str(_exists(final))
        return entry
    staging = out_dir / f".staging-{secrets.token_hex(6)}"  # short, whatever the source's name
    staging.mkdir()  # as the user's umask says: it becomes the released folder
    try:
        state = convert(p, staging)
        report = verify(p, staging / f"{v.name}.pdparams")
        entry.logits_rel = report.logits.max_rel
        if not report.ok:
            entry.status = Status.PARITY_FAILED
            entry.detail = f"first divergence at {report.first_divergence}"
            return entry
        files = {path.name: hash_file(path) for path in sorted(staging.iterdir())}  # the weights
        files["config.json"] = _write(
            staging / "config.json", json.dumps(hub_config(v, state), indent=2) + "\n"
        )
        result = (measured or {}).get(v.name)
        check_eval_result(result, files, v)
        params = sum(array.size for array in {id(x): x for x in state.values()}.values())  # aliases once
        manifest = _manifest(
            v, p.source, p.sha256, p.official, _file_table(staging, files), params, report.to_dict()
        )
        files["README.md"] = write_card(staging, manifest.to_dict(), result)
        manifest = replace(manifest, files=_file_table(staging, files))  # the card and config included
        write_manifest(staging, manifest)
        publish(staging, final, force)
        entry.status, entry.files = Status.RELEASED, dict(sorted(files.items()))
    except CoatError as e:
        entry.status, entry.detail = Status.REFUSED, str(e)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def release(
    src_dir: Path,
    out_dir: Path,
    allow_unofficial: bool = False,
    force: bool = False,
    progress: bool = True,
    eval_results: dict[str, MeasuredAccuracy] | None = None,
) -> list[Entry]:
    """Release every checkpoint in ``src_dir`` into ``out_dir``; ``eval_results`` maps a variant
    to its validated ``evaluate --result`` file, for the model card's model-index.

    :func:`plan` runs first, so that what would make the whole release wrong is refused before
    anything is written (``out_dir`` is not even created).
    """
    from tqdm import tqdm

    planned = plan(src_dir, allow_unofficial)
    out_dir.mkdir(parents=True, exist_ok=True)
    # closed as the loop ends, also by an exception, so that an error line is the last one printed
    with tqdm(planned, desc="releasing", unit="checkpoint", disable=not progress, file=sys.stderr) as bar:
        return [release_one(p, out_dir, force, eval_results) for p in bar]


def summary(entries: list[Entry]) -> str:
    rows = [f"{'source':40} {'variant':22} {'logits max|d|/max|ref|':>23}  status"]
    for e in entries:
        rel = "-" if math.isnan(e.logits_rel) else f"{e.logits_rel:.3e}"
        rows.append(
            f"{e.source.name:40} {e.variant:22} {rel:>23}  {e.status.value}"
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
    require("the release", REFERENCE_MODULES, "for the parity check and the model card")
    eval_results = read_eval_results(args.eval_results)
    entries = release(
        args.src_dir, args.out_dir, args.allow_unofficial, args.force, eval_results=eval_results
    )
    released = {e.variant for e in entries if e.status is Status.RELEASED}
    for variant in sorted(eval_results.keys() - released):
        print(f"note: the --eval-results of {variant} matched no released checkpoint", file=sys.stderr)
    print(summary(entries))
    if any(e.status is Status.PARITY_FAILED for e in entries):
        return 1
    return 2 if any(e.status is Status.REFUSED for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
