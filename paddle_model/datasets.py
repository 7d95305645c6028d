"""ImageNet-style evaluation data: an ImageFolder tree or a file list, read into labelled samples.

No paddle here: listing and checking the data is plain Python, so it is the same on every rank
of a distributed run and testable on its own. Problems found while listing (a class folder
without images, a list line that does not parse, a label out of range) raise :class:`CoatError`
naming the folder or line, or, with ``skip_bad``, are recorded in :attr:`EvalData.skipped`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CoatError

# the file types torchvision's ImageFolder takes (compared lower-case), so both list the same files
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class EvalData:
    """Samples in a fixed order, how they were labelled, and what was skipped while listing."""

    root: Path
    samples: list[Sample]
    labelling: str  # "sorted folders", "ImageNet wnids" or "list file"
    classes: list[str] = field(default_factory=list)  # folder names, for trees
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, folder or line; reason)

    def limit(self, n: int | None) -> "EvalData":
        """``n`` samples spread evenly over the data (every k-th), for a quick check of all classes."""
        if n is None or n >= len(self.samples):
            return self
        if n < 1:
            raise CoatError(f"--limit {n}: give a positive number of images")
        total = len(self.samples)
        picked = [self.samples[i * total // n] for i in range(n)]
        return EvalData(self.root, picked, self.labelling, self.classes, self.skipped)


def _problem(skipped: list, skip_bad: bool, item: str, reason: str) -> None:
    if not skip_bad:
        raise CoatError(f"{item}: {reason} (fix the data, or pass --skip-bad to leave it out)")
    skipped.append((item, reason))


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, in ImageFolder's order (walk sorted, names sorted)."""
    found = []
    for root, _, names in sorted(os.walk(folder, followlinks=True)):
        found += [Path(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
    return found


def scan_folder(root: str | os.PathLike, num_classes: int, skip_bad: bool = False,
                wnids: list[str] | None = None) -> EvalData:
    """An ImageFolder tree ``root/<class>/<image>``: one folder per class, in sorted order.

    When every folder is named by an ImageNet wnid (``n01440764``, ...) and ``wnids`` (the
    1000 ImageNet-1k wnids, sorted) is given, a folder's label is its ImageNet-1k index: the
    same as sorted order for the full validation set, and still right for a subset of it.
    """
    root = Path(root)
    if not root.is_dir():
        raise CoatError(f"{root}: no such folder; give an ImageFolder tree (ROOT/<class>/<image>) "
                        "or a file list with --list")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise CoatError(f"{root}: no class folders in it; an ImageFolder tree is ROOT/<class>/<image> "
                        "(or give a file list with --list)")
    if wnids is not None and set(classes) <= set(wnids):
        index = {w: i for i, w in enumerate(wnids)}
        labels, labelling = [index[c] for c in classes], "ImageNet wnids"
    else:
        labels, labelling = list(range(len(classes))), "sorted folders"
    if max(labels) >= num_classes:
        raise CoatError(f"{root}: {len(classes)} class folders but the model has {num_classes} classes; "
                        "point DATA at the folder whose subfolders are the classes")
    samples, skipped = [], []
    for name, label in zip(classes, labels):
        images = _images_under(root / name)
        if not images:
            _problem(skipped, skip_bad, str(root / name), "class folder with no images")
        samples += [Sample(str(path), label) for path in images]
    return EvalData(root, samples, labelling, classes, skipped)


def read_list(list_file: str | os.PathLike, root: str | os.PathLike, num_classes: int,
              skip_bad: bool = False) -> EvalData:
    """A file list: ``<path relative to root> <label>`` per line (Paddle's ``val_list.txt``)."""
    list_file, root = Path(list_file), Path(root)
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CoatError(f"{list_file}: cannot read the file list ({e})") from None
    samples, skipped = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{list_file}:{number}"
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            _problem(skipped, skip_bad, where, f"cannot parse {line.strip()!r}; expected '<relative path> <label>'")
            continue
        label = int(parts[1])
        if not 0 <= label < num_classes:
            _problem(skipped, skip_bad, where, f"label {label} is outside 0..{num_classes - 1}")
            continue
        samples.append(Sample(str(root / parts[0].strip()), label))
    if not samples and not skipped:
        raise CoatError(f"{list_file}: the file list is empty")
    return EvalData(root, samples, "list file", [], skipped)
