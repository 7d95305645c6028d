"""ImageNet-style evaluation data: an ImageFolder tree or a file list, read into labelled samples.

No paddle here: listing and checking the data is plain Python, so it is the same on every rank
of a distributed run and testable on its own. Problems found while listing (a class folder
without images, a list line that does not parse, a label out of range, an image name that is
not a regular file) raise :class:`CoatError` naming the folder or line, or, with ``skip_bad``,
are recorded in :attr:`EvalData.skipped`.

Only regular files are read (a FIFO named ``x.JPEG`` would block the reader forever) and no
directory is visited twice (a symlink ``class/loop -> .`` would count the class again and
again). :class:`EvalImages` is the dataset the DataLoader's workers receive, so it is defined
here at module level: workers started with *spawn* (macOS, Windows) get it by pickling.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter.errors import preview
from converter.files import read_bounded

from .errors import CoatError

# the file types torchvision's ImageFolder takes (compared lower-case), so both list the same files
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_LIST_BYTES = 64 << 20  # a file list or class map; ImageNet's val list is about 2 MB
MAX_LINE_CHARS = 4096  # a path relative to the data root and a label: PATH_MAX is 4096


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def load_image(path: str | os.PathLike, transform=None):
    """The image at ``path`` as an RGB PIL image, or :class:`CoatError` saying why it is not one.

    Only a regular file is opened (opened without blocking and checked on the open descriptor,
    so a FIFO or device cannot stall the reader). PIL refuses sources beyond its decompression
    limit; with ``transform`` (an :class:`~paddle_model.transforms.EvalTransform`) the size the
    image would be resized to is checked against the same limit before anything is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise CoatError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise CoatError(f"{path}: is a directory, not an image file") from None
    except OSError as e:
        raise CoatError(f"{path}: cannot be opened ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise CoatError(f"{path}: {_kind(mode)}, not an image file; only regular files are read")
        try:
            with Image.open(f) as image:
                if transform is not None:
                    transform.check_size(*image.size)
                return image.convert("RGB")
        except (
            UnidentifiedImageError,
            OSError,
            SyntaxError,
            ValueError,
            EOFError,
            Image.DecompressionBombError,
        ) as e:  # PIL reports damage in all of these
            raise CoatError(f"{path}: not a readable image ({e})") from None
        except CoatError as e:
            raise CoatError(f"{path}: {e}") from None


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


# how the samples got their labels (EvalData.labelling)
SORTED_FOLDERS = "sorted folders"
IMAGENET_WNIDS = "ImageNet wnids"
LIST_FILE = "list file"
CLASS_MAP = "class map"


@dataclass
class EvalData:
    """Samples in a fixed order, how they were labelled, and what was skipped while listing."""

    root: Path
    samples: list[Sample]
    labelling: str  # SORTED_FOLDERS, IMAGENET_WNIDS, LIST_FILE or CLASS_MAP
    classes: list[str] = field(default_factory=list)  # folder names, for trees
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, folder or line; reason)

    def limit(self, n: int | None) -> EvalData:
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


def _images_under(folder: Path, seen: set, skipped: list, skip_bad: bool) -> list[Path]:
    """Image files anywhere below ``folder``, in ImageFolder's order (walk sorted, names sorted).

    Symbolic links are followed, as ImageFolder does, but no directory in ``seen`` (device and
    inode: the data root, the class folders, everything walked so far) is entered again, so a
    link back up the tree adds nothing. A name with an image suffix that is not a regular file
    (a FIFO, a socket, a device, a dangling link) is a problem.
    """
    found = []
    for root, _, names in _walk_once(folder, seen):
        for name in sorted(names):
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = Path(root, name)
            try:
                mode = os.stat(path).st_mode
            except OSError as e:
                _problem(skipped, skip_bad, str(path), f"cannot be read ({e.strerror or e})")
                continue
            if stat.S_ISREG(mode):
                found.append(path)
            else:
                _problem(skipped, skip_bad, str(path), f"{_kind(mode)}, not an image file")
    return found


def _walk_once(folder: Path, seen: set) -> list[tuple[str, list[str], list[str]]]:
    """``os.walk(folder, followlinks=True)`` sorted by folder, entering no directory of ``seen``
    (but ``folder`` itself) and adding each one it enters."""
    walked = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        identity = _identity(root)
        if root != str(folder) and identity in seen:
            dirs[:] = []
            continue
        seen.add(identity)
        dirs.sort()
        walked.append((root, dirs, names))
    return sorted(walked)


def _identity(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def scan_folder(
    root: str | os.PathLike,
    num_classes: int,
    skip_bad: bool = False,
    wnids: list[str] | None = None,
    class_map: Mapping[str, int] | None = None,
) -> EvalData:
    """An ImageFolder tree ``root/<class>/<image>``: one folder per class, in sorted order.

    ``class_map`` (folder name -> label) labels the folders explicitly; every folder must be in
    it. Otherwise, with ``wnids`` (the 1000 ImageNet-1k wnids, sorted: given for a model with
    ImageNet's classes) every folder must be named by a wnid (``n01440764``, ...) and gets its
    ImageNet-1k index, the same as sorted order for the full validation set and still right for
    a subset; other names are refused, as their sorted order would silently be read as
    ImageNet's first classes. Without either, labels are the folders' sorted order.
    """
    root = Path(root)
    if not root.is_dir():
        raise CoatError(
            f"{root}: no such folder; give an ImageFolder tree (ROOT/<class>/<image>) "
            "or a file list with --list"
        )
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise CoatError(
            f"{root}: no class folders in it; an ImageFolder tree is ROOT/<class>/<image> "
            "(or give a file list with --list)"
        )
    if class_map is None and len(classes) > num_classes:
        raise CoatError(
            f"{root}: {len(classes)} class folders but the model has {num_classes} classes; "
            "point DATA at the folder whose subfolders are the classes"
        )
    if class_map is not None:
        unmapped = [c for c in classes if c not in class_map]
        if unmapped:
            raise CoatError(
                f"{root}: the class folders {preview(unmapped)} are not in the class map; "
                "give every folder a label"
            )
        labels, labelling = [class_map[c] for c in classes], CLASS_MAP
    elif wnids is not None:
        index = {w: i for i, w in enumerate(wnids)}
        others = [c for c in classes if c not in index]
        if others:
            raise CoatError(
                f"{root}: the class folders {preview(others)} are not ImageNet wnids and the model "
                f"has ImageNet's {len(wnids)} classes; give --class-map FILE ('<folder> <label>' "
                f"per line) or use a model with {len(classes)} classes"
            )
        labels, labelling = [index[c] for c in classes], IMAGENET_WNIDS
    else:
        labels, labelling = list(range(len(classes))), SORTED_FOLDERS
    samples, skipped = [], []
    seen = {_identity(root), *(_identity(root / name) for name in classes)}
    for name, label in zip(classes, labels):
        images = _images_under(root / name, seen, skipped, skip_bad)
        if not images:
            _problem(skipped, skip_bad, str(root / name), "class folder with no images")
        samples += [Sample(str(path), label) for path in images]
    return EvalData(root, samples, labelling, classes, skipped)


def read_list(
    list_file: str | os.PathLike, root: str | os.PathLike, num_classes: int, skip_bad: bool = False
) -> EvalData:
    """A file list: ``<path relative to root> <label>`` per line (Paddle's ``val_list.txt``)."""
    list_file, root = Path(list_file), Path(root)
    lines = read_lines(list_file, "a file list")
    samples, skipped = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{list_file}:{number}"
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            _problem(
                skipped, skip_bad, where, f"cannot parse {line.strip()!r}; expected '<relative path> <label>'"
            )
            continue
        label = int(parts[1])
        if not 0 <= label < num_classes:
            _problem(skipped, skip_bad, where, f"label {label} is outside 0..{num_classes - 1}")
            continue
        samples.append(Sample(str(root / parts[0].strip()), label))
    if not samples and not skipped:
        raise CoatError(f"{list_file}: the file list is empty")
    return EvalData(root, samples, LIST_FILE, [], skipped)


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a small UTF-8 text file (a file list, a class map), read within
    :data:`MAX_LIST_BYTES` and :data:`MAX_LINE_CHARS`, only from a regular file."""
    data = read_bounded(path, MAX_LIST_BYTES, CoatError, what)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CoatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); give {what}") from None
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            raise CoatError(f"{path}:{number}: a line longer than {MAX_LINE_CHARS} characters; give {what}")
    return lines


def read_class_map(path: str | os.PathLike, num_classes: int) -> dict[str, int]:
    """A class map: ``<folder name> <label>`` per line, each folder once, labels in range."""
    mapping: dict[str, int] = {}
    for number, line in enumerate(read_lines(path, "a class map"), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        where = f"{path}:{number}"
        if len(parts) != 2 or not parts[1].isdigit():
            raise CoatError(f"{where}: cannot parse {line.strip()!r}; expected '<folder name> <label>'")
        folder, label = parts[0].strip(), int(parts[1])
        if not label < num_classes:
            raise CoatError(f"{where}: label {label} is outside 0..{num_classes - 1}, the model's classes")
        if folder in mapping:
            raise CoatError(f"{where}: folder {folder!r} is mapped twice")
        mapping[folder] = label
    if not mapping:
        raise CoatError(f"{path}: the class map is empty")
    return mapping


def read_image(path: str, transform) -> np.ndarray:
    """``transform(load_image(path))``: the model input of one image file, sizes checked first."""
    try:
        return transform(load_image(path, transform))
    except MemoryError:
        raise CoatError(f"{path}: out of memory while decoding and resizing it") from None


class EvalImages:
    """The samples as a map-style dataset for ``paddle.io.DataLoader``.

    Item ``i`` is (image [3, H, W] float32, label, i, readable); an unreadable image comes back
    as zeros with readable 0, so one bad file does not kill a worker. Plain data and a
    dataclass transform: it pickles, as workers started with *spawn* need.
    """

    def __init__(self, samples: list[Sample], transform: Callable) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> np.ndarray:
        """The model input of item ``index`` (CoatError if its file cannot be read)."""
        return read_image(self.samples[index].path, self.transform)

    def __getitem__(self, index: int):
        try:
            x, ok = self.read(index), 1
        except CoatError:
            x, ok = np.zeros((3, self.transform.size, self.transform.size), np.float32), 0
        return x, np.int64(self.samples[index].label), np.int64(index), np.int64(ok)

    def failure(self, index: int) -> str:
        """Why item ``index`` could not be read, asked again here (workers pass no strings)."""
        path = self.samples[index].path
        try:
            self.read(index)
        except CoatError as e:
            return str(e).removeprefix(f"{path}: ")
        return "could not be read during the run"
