"""The training data: class folders checked against each other, the batches of each epoch, and
their loading.

Every random choice of a run is a function of ``(seed, epoch)`` or ``(seed, step)``, never of a
generator's running state: the order of an epoch is ``default_rng([seed, epoch])``'s permutation,
so that a run resumed at any step reads the same batches as one never interrupted, on any number
of ranks. A global batch of ``B`` images is split into ``world`` consecutive slices, rank ``r``
taking slice ``r``, so that N ranks x batch B/N see what one process with batch B sees.
"""

from __future__ import annotations

import math
import os
import random as pyrandom
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from converter.errors import WeightsError
from converter.paddle_weights import _check_names

from ..datasets import LIST_FILE, EvalData, EvalImages, Sample, load_image, read_list, scan_folder
from ..errors import CoatError
from ..transforms import IMAGENET_MEAN, IMAGENET_STD

ANY_LABEL = 1 << 30  # listing a tree for training: every folder is a class, whatever the model


@dataclass
class TrainSet:
    """The images of one split and the class names their labels index."""

    data: EvalData
    classes: list[str]

    @property
    def samples(self) -> list[Sample]:
        return self.data.samples


def read_split(
    root: str | os.PathLike, list_file: str | os.PathLike | None, skip_bad: bool, what: str
) -> TrainSet:
    """An ImageFolder tree (class names: its folders, sorted) or a file list (names: the labels).
    Folder names must pass the label-name rules of the weights' ``config.json``, which the run
    writes at its end."""
    if list_file is not None:
        data = read_list(list_file, root, ANY_LABEL, skip_bad)
        classes = [str(i) for i in range(max(s.label for s in data.samples) + 1)] if data.samples else []
    else:
        data = scan_folder(root, ANY_LABEL, skip_bad)  # sorted folders: no ImageNet relabelling
        classes = data.classes
        for name in classes:
            try:
                _check_names([name], 1, str(Path(root) / name))
            except WeightsError as e:
                rule = str(e).rpartition(" must be ")[2]
                raise CoatError(
                    f"{str(Path(root) / name)!r}: a class folder's name must be {rule} "
                    "(it becomes a label name of the weights); rename the folder"
                ) from None
    if not data.samples:
        raise CoatError(f"{root}: the {what} set has no readable images")
    return TrainSet(data, classes)


def check_classes(train: TrainSet, val: TrainSet | None, num_classes: int | None, where: Path) -> int:
    """The number of classes: the training folders', which the val set and ``--num-classes``
    must agree with (a mismatch would silently score the wrong labels)."""
    if val is not None and val.classes != train.classes and val.data.labelling != LIST_FILE:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        detail = "; ".join(
            part
            for part in (
                f"only in training: {', '.join(only_train[:5])}" if only_train else "",
                f"only in val: {', '.join(only_val[:5])}" if only_val else "",
            )
            if part
        )
        raise CoatError(
            f"{val.data.root}: its class folders differ from {where}'s ({detail or 'another order'}); "
            "give both sets the same class folders"
        )
    n = len(train.classes)
    if num_classes is not None and num_classes != n:
        raise CoatError(
            f"--num-classes {num_classes} contradicts {where}, which has {n} class folders; "
            f"drop --num-classes or pass {n}"
        )
    if val is not None and val.data.labelling == LIST_FILE and len(val.classes) > n:
        raise CoatError(
            f"{val.data.root}: the val list has labels up to {len(val.classes) - 1}, but {n} classes"
        )
    return n


def epoch_batches(n: int, batch: int, seed: int, epoch: int, shuffle: bool = True) -> list[np.ndarray]:
    """The global batches of ``epoch`` (indices into the samples), the last partial one dropped,
    as timm's training loader does (Mixup needs full, even batches)."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch] for i in range(0, n - batch + 1, batch)]


def rank_slice(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's consecutive share of a global batch."""
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]


class TrainImages(EvalImages):
    """The training samples as a map-style dataset; item ``i`` is as :class:`EvalImages`'s.

    The transform is the eval transform (``--aug none``); a plain-data class, picklable for
    DataLoader workers started with *spawn*.
    """


def load_batch(dataset: TrainImages, indices: np.ndarray):
    """(images [B, 3, H, W] float32, labels [B] int64, indices, readable [B] bool), read here."""
    items = [dataset[int(i)] for i in indices]
    x = np.stack([it[0] for it in items])
    labels = np.array([it[1] for it in items], np.int64)
    ok = np.array([bool(it[3]) for it in items])
    return x, labels, np.asarray(indices, np.int64), ok


def batches(dataset: TrainImages, plan: list[np.ndarray], workers: int):
    """The batches of ``plan`` in order: read in this process (``workers == 0``) or by a
    ``paddle.io.DataLoader``'s workers (which keep the order)."""
    if workers == 0:
        for indices in plan:
            yield load_batch(dataset, indices)
        return
    import paddle

    loader = paddle.io.DataLoader(
        dataset, batch_sampler=[[int(i) for i in b] for b in plan], num_workers=workers
    )
    for x, labels, indices, ok in loader:
        yield x.numpy(), labels.numpy(), indices.numpy(), ok.numpy().astype(bool)


def sample_paths(dataset: TrainImages, indices) -> list[str]:
    return [dataset.samples[int(i)].path for i in indices]


# --- the train transform -------------------------------------------------------------------

# timm's RandAugment 'inc1' ops, in timm's order (the op chosen is an index into this list)
RAND_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


class SampleDraws:
    """The random draws of one image's transform, from its own seed: python's ``random`` for
    what timm draws from it (crop, RandAugment's magnitudes and signs, erasing boxes), numpy for
    what timm draws from numpy (RandAugment's op choice) or torch (the flip, the erasing noise).
    A test gives :class:`TrainTransform` an object with the same methods backed by timm's sources."""

    def __init__(self, *seed: int) -> None:
        self.rng = np.random.default_rng(list(seed))
        self.py = pyrandom.Random(int(self.rng.integers(0, 2**63)))

    def random(self) -> float:
        return self.py.random()

    def uniform(self, a: float, b: float) -> float:
        return self.py.uniform(a, b)

    def randint(self, a: int, b: int) -> int:
        return self.py.randint(a, b)

    def gauss(self, mu: float, sigma: float) -> float:
        return self.py.gauss(mu, sigma)

    def flip(self) -> float:
        return float(self.rng.random())

    def choose(self, n: int, k: int) -> list[int]:
        return [int(i) for i in self.rng.integers(0, n, k)]

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32)


def _negate(value: float, draws) -> float:
    return -value if draws.random() > 0.5 else value  # timm's _randomly_negate


@dataclass(frozen=True)
class TrainTransform:
    """timm's ``create_transform(is_training=True)`` for CoaT, given the draws: RandomResizedCrop
    (bicubic, scale 0.08-1, ratio 3/4-4/3), horizontal flip 0.5, RandAugment
    ``rand-m9-mstd0.5-inc1`` (2 ops, each with probability 0.5, magnitude ~ N(9, 0.5) clipped to
    [0, 10], fill the ImageNet mean, bicubic), ToTensor, normalisation, random erasing (p 0.25,
    per-pixel normal noise, one box of 2%-1/3 of the area, aspect 0.3-1/0.3). Plain data: it
    pickles for DataLoader workers."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    ra_layers: int = 2
    ra_magnitude: float = 9.0
    ra_std: float = 0.5
    ra_prob: float = 0.5
    re_prob: float = 0.25
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image, draws) -> np.ndarray:
        image = self.crop(image.convert("RGB"), draws)
        if draws.flip() < self.hflip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image = self.rand_augment(image, draws)
        x = self.normalise(image)
        return self.erase(x, draws)

    def crop(self, image, draws):
        """timm's ``RandomResizedCropAndInterpolation``."""
        w, h = image.size
        area = w * h
        for _ in range(10):
            target = draws.uniform(*self.scale) * area
            aspect = math.exp(draws.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            tw, th = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if tw <= w and th <= h:
                top, left = draws.randint(0, h - th), draws.randint(0, w - tw)
                break
        else:  # the central crop of the nearest allowed aspect
            if w / h < min(self.ratio):
                tw, th = w, int(round(w / min(self.ratio)))
            elif w / h > max(self.ratio):
                tw, th = int(round(h * max(self.ratio))), h
            else:
                tw, th = w, h
            top, left = (h - th) // 2, (w - tw) // 2
        return image.crop((left, top, left + tw, top + th)).resize((self.size, self.size), Image.BICUBIC)

    def rand_augment(self, image, draws):
        for index in draws.choose(len(RAND_OPS), self.ra_layers):
            if self.ra_prob < 1.0 and draws.random() > self.ra_prob:
                continue
            magnitude = draws.gauss(self.ra_magnitude, self.ra_std) if self.ra_std > 0 else self.ra_magnitude
            image = self.op(image, RAND_OPS[index], max(0.0, min(magnitude, 10.0)), draws)
        return image

    def op(self, image, name: str, magnitude: float, draws):
        """One RandAugment op at ``magnitude`` (0-10), timm's level arithmetic and PIL calls."""
        level = magnitude / 10.0
        fill = tuple(min(255, round(255 * m)) for m in self.mean)
        affine = {"resample": Image.BICUBIC, "fillcolor": fill}
        if name == "AutoContrast":
            return ImageOps.autocontrast(image)
        if name == "Equalize":
            return ImageOps.equalize(image)
        if name == "Invert":
            return ImageOps.invert(image)
        if name == "Rotate":
            return image.rotate(_negate(level * 30.0, draws), **affine)
        if name == "PosterizeIncreasing":
            bits = 4 - int(level * 4)
            if bits <= 0:  # magnitude 10: no bit kept, black (newer Pillow refuses 0 bits, timm with it)
                return image.point([0] * 256 * len(image.getbands()))
            return image if bits >= 8 else ImageOps.posterize(image, bits)
        if name == "SolarizeIncreasing":
            return ImageOps.solarize(image, 256 - min(256, int(level * 256)))
        if name == "SolarizeAdd":
            add = min(128, int(level * 110))
            lut = [min(255, i + add) if i < 128 else i for i in range(256)]
            return image.point(lut * 3)
        if name.endswith("Increasing"):  # Color, Contrast, Brightness, Sharpness
            factor = max(0.1, 1.0 + _negate(level * 0.9, draws))
            enhance = getattr(ImageEnhance, name.removesuffix("Increasing"))
            return enhance(image).enhance(factor)
        if name in ("ShearX", "ShearY"):
            f = _negate(level * 0.3, draws)
            matrix = (1, f, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, f, 1, 0)
            return image.transform(image.size, Image.AFFINE, matrix, **affine)
        if name in ("TranslateXRel", "TranslateYRel"):
            pct = _negate(level * 0.45, draws)
            if name == "TranslateXRel":
                matrix = (1, 0, pct * image.size[0], 0, 1, 0)
            else:
                matrix = (1, 0, 0, 0, 1, pct * image.size[1])
            return image.transform(image.size, Image.AFFINE, matrix, **affine)
        raise ValueError(f"unknown RandAugment op {name!r}")

    def normalise(self, image) -> np.ndarray:
        x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return (x - mean) / std

    def erase(self, x: np.ndarray, draws) -> np.ndarray:
        """timm's ``RandomErasing(mode='pixel', max_count=1)`` on the normalised image."""
        if draws.random() > self.re_prob:
            return x
        _, h, w = x.shape
        for _ in range(10):
            target = draws.uniform(0.02, 1 / 3) * h * w
            aspect = math.exp(draws.uniform(math.log(0.3), math.log(1 / 0.3)))
            eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if ew < w and eh < h:
                top, left = draws.randint(0, h - eh), draws.randint(0, w - ew)
                x[:, top : top + eh, left : left + ew] = draws.normal((x.shape[0], eh, ew))
                break
        return x


class AugmentedImages(TrainImages):
    """Training samples through :class:`TrainTransform`, image ``i`` of epoch ``e`` drawing from
    ``SampleDraws(seed, e, i)``: the same pixels whichever worker or resumed run reads it."""

    def __init__(self, samples: list[Sample], transform: TrainTransform, eval_size: int, seed: int) -> None:
        super().__init__(samples, transform)
        self.eval_size, self.seed, self.epoch = eval_size, seed, 0

    def read(self, index: int) -> np.ndarray:
        image = load_image(self.samples[index].path)
        return self.transform(image, SampleDraws(self.seed, self.epoch, index))
