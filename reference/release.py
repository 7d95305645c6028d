"""Convert, verify and package CoaT checkpoints for publishing.

    python -m reference.release SRC_DIR OUT_DIR [--allow-unofficial] [--force]

For every checkpoint in SRC_DIR (official file names or any name; the variant comes from the
tensors) it writes ``OUT_DIR/<variant>/`` with ``<variant>.pdparams``, ``<variant>.safetensors``,
``manifest.json`` (hashes, parity, preprocessing, published accuracy, versions) and a model card
``README.md``. A variant that fails parity leaves nothing behind; the exit code is then 1.
Needs torch and timm for the parity check.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from converter.cli import ArgumentParser
from converter.errors import CoatError, ConversionError
from converter.pipeline import convert_checkpoint, sha256_file
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
            f"{src_dir}: no checkpoints found (looked for {', '.join(CHECKPOINT_SUFFIXES)} files)")
    return found


def official_variant(sha256: str) -> CoatVariant | None:
    """The variant whose official release file has this sha256, if any."""
    return next((v for v in VARIANTS.values() if sha256.startswith(v.release_sha256)), None)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("coat-paddle", "paddlepaddle", "numpy", "torch", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _manifest(v: CoatVariant, source: Path, sha256: str, official: bool, files: dict[str, str],
              params: int, parity: dict) -> dict:
    return {
        "variant": v.name,
        "source": {"file": source.name, "sha256": sha256, "official": official},
        "files": files,
        "params": params,
        "parity": parity,
        "preprocessing": eval_transform(v).describe(),
        "input_size": [3, v.img_size, v.img_size],
        "accuracy": {"dataset": "ImageNet-1k val", "top1": v.top1, "top5": v.top5,
                     "reported_by": "official CoaT release (mlpc-ucsd)"},
        "license": "Apache-2.0",
        "versions": _versions(),
    }


def _model_card(m: dict) -> str:
    v, pre = m["variant"], m["preprocessing"]
    if pre["crop_mode"] == "squash":
        how = f"resize to {pre['size']}x{pre['size']} ({pre['interpolation']}), no crop"
    else:
        how = (f"resize the shorter side to {pre['resize']} ({pre['interpolation']}), "
               f"centre crop {pre['size']}x{pre['size']}")
    logits = next(o for o in m["parity"]["outputs"] if o["name"] == "logits")
    source = m["source"]
    return f"""# {v} for PaddlePaddle

CoaT (Co-Scale Conv-Attentional Image Transformers, Xu et al., ICCV 2021), variant `{v}`,
{m['params'] / 1e6:.1f}M parameters, ImageNet-1k classifier, converted from PyTorch with
this project's `convert.py` and verified against timm's implementation.

## Load it

```python
import paddle_model
model = paddle_model.create_model("{v}", pretrained="{v}.pdparams")
model.eval()
```

`{v}.safetensors` holds the same tensors.

## Preprocessing

RGB, {how}, scale to [0, 1], normalise with mean {list(pre['mean'])} and std {list(pre['std'])}
(`paddle_model.transforms.eval_transform("{v}")`).

## Accuracy

ImageNet-1k validation, as published by the authors: top-1 {m['accuracy']['top1']}%,
top-5 {m['accuracy']['top5']}%.

## Provenance

- source: `{source['file']}`, sha256 `{source['sha256']}`, official release: {'yes' if source['official'] else 'no'}
- parity against timm on a seeded batch at {m['input_size'][1]}x{m['input_size'][2]}: logits max|d|/max|ref|
  {logits['max_rel']:.2e}, every scale and block within {m['parity']['tolerance']:.0e}
- file hashes: see `manifest.json`

## License

Apache-2.0, as the original weights. CoaT by Weijian Xu, Yifan Xu, Tyler Chang and Zhuowen Tu,
https://github.com/mlpc-ucsd/CoaT.
"""


def release_one(source: Path, out_dir: Path, allow_unofficial: bool, force: bool) -> Entry:
    from .parity import verify_conversion

    entry = Entry(source)
    sha256 = sha256_file(source)
    known = official_variant(sha256)
    if known is None and not allow_unofficial:
        entry.status, entry.detail = "refused", (
            f"sha256 {sha256[:8]} matches no official release; pass --allow-unofficial")
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
        files = _file_hashes(staging)
        params = sum(array.size for array in {id(x): x for x in a.values()}.values())  # aliases once
        manifest = _manifest(v, source, sha256, known is not None, files, params, report.to_dict())
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / "README.md").write_text(_model_card(manifest))
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


def release(src_dir: Path, out_dir: Path, allow_unofficial: bool = False,
            force: bool = False, progress: bool = True) -> list[Entry]:
    """Release every checkpoint in ``src_dir`` into ``out_dir``."""
    from tqdm import tqdm

    sources = find_checkpoints(src_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for source in tqdm(sources, desc="releasing", unit="checkpoint", disable=not progress, file=sys.stderr):
        entries.append(release_one(source, out_dir, allow_unofficial, force))
    seen = [e.variant for e in entries if e.status == "released"]
    if len(seen) != len(set(seen)):
        raise ConversionError(f"{src_dir}: holds more than one checkpoint of the same variant")
    return entries


def summary(entries: list[Entry]) -> str:
    rows = [f"{'source':40} {'variant':22} {'logits max|d|/max|ref|':>23}  status"]
    for e in entries:
        rows.append(f"{e.source.name:40} {e.variant:22} {e.logits_rel:>23.3e}  {e.status}"
                    + (f": {e.detail}" if e.detail else ""))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m reference.release", description=__doc__.split("\n")[0])
    p.add_argument("src_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--allow-unofficial", action="store_true",
                   help="release checkpoints that are not the official files (marked official: false)")
    p.add_argument("--force", action="store_true", help="replace variants already in OUT_DIR")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")
    try:
        entries = release(args.src_dir, args.out_dir, args.allow_unofficial, args.force)
    except CoatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(entries))
    if any(e.status == "parity failed" for e in entries):
        return 1
    return 2 if any(e.status == "refused" for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
