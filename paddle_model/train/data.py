"""The training data: class folders checked against each other, the batches of each epoch, and
their loading.

Every random choice of a run is a function of ``(seed, epoch)`` or ``(seed, step)``, never of a
generator's running state: the order of an epoch is ``default_rng([seed, epoch])``'s permutation,
so that a run resumed at any step reads the same batches as one never interrupted, on any number
of ranks. A global batch of ``B`` images is split into ``world`` consecutive slices, rank ``r``
taking slice ``r``, so that N ranks x batch B/N see what one process with batch B sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import EvalData, EvalImages, Sample, read_list, scan_folder
from ..errors import CoatError

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
    """An ImageFolder tree (class names: its folders, sorted) or a file list (names: the labels)."""
    if list_file is not None:
        data = read_list(list_file, root, ANY_LABEL, skip_bad)
        classes = [str(i) for i in range(max(s.label for s in data.samples) + 1)] if data.samples else []
    else:
        data = scan_folder(root, ANY_LABEL, skip_bad)  # sorted folders: no ImageNet relabelling
        classes = data.classes
    if not data.samples:
        raise CoatError(f"{root}: the {what} set has no readable images")
    return TrainSet(data, classes)


def check_classes(train: TrainSet, val: TrainSet | None, num_classes: int | None, where: Path) -> int:
    """The number of classes: the training folders', which the val set and ``--num-classes``
    must agree with (a mismatch would silently score the wrong labels)."""
    if val is not None and val.classes != train.classes and val.data.labelling != "list file":
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
    if val is not None and val.data.labelling == "list file" and len(val.classes) > n:
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
