"""The evaluation loop, in one process or on every rank of ``paddle.distributed.launch``.

Every rank reads its shard through ``paddle.io.DistributedBatchSampler``; what happened to each
image is an :class:`Outcomes` row, and the ranks' tables are combined with
``paddle.distributed.all_reduce`` (element-wise maximum: each image is set by the rank that
evaluated it, the sampler's padding repeats write the same entry again). A reference model,
if given, is any callable from the same float32 batch to logits (``reference.evaluate`` passes
timm's CoaT); this module needs no torch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..capture import Caught, caught_fds
from ..datasets import EvalImages

# columns of the per-image outcome table that the ranks combine (element-wise maximum)
SEEN, BAD, TOP1, TOP5, PRED, REF_TOP1, REF_TOP5, REF_PRED = range(8)
ABS_DIFF, REF_MAX, REF_MARGIN = range(3)

Reference = Callable[[np.ndarray], np.ndarray]  # float32 [N, 3, H, W] -> logits [N, classes]


@dataclass
class Outcomes:
    """What happened to each image, indexed like the data; an unset entry is 0 (ints) or -1."""

    flags: np.ndarray  # int64 [N, 8]; PRED and REF_PRED hold class + 1
    diffs: np.ndarray  # float64 [N, 3]: max |paddle - ref| logit, max |ref logit|, ref's top-2 margin
    seconds: float = 0.0

    @classmethod
    def empty(cls, n: int) -> Outcomes:
        return cls(np.zeros((n, 8), np.int64), np.full((n, 3), -1.0))


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside paddle.distributed.launch."""
    import paddle.distributed as dist

    size = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if size > 1 and not dist.is_initialized():
        with _quiet_stderr():  # Paddle's table of modified flags and its rendezvous log lines
            dist.init_parallel_env()
    return (dist.get_rank(), dist.get_world_size()) if size > 1 else (0, 1)


@contextlib.contextmanager
def _quiet_stderr():
    """Hold back what is written to file descriptor 2 (Python's and C++'s writes alike) inside
    the block; write it out after all if the block raises, so that no error is lost."""
    held = Caught()
    try:
        with caught_fds(held, 2):
            yield
    except BaseException:
        os.write(2, held.data)
        raise


def _any_rank(flag: bool, size: int) -> bool:
    """True on every rank when ``flag`` is true on one: lets all ranks stop together."""
    if size == 1:
        return flag
    import paddle
    import paddle.distributed as dist

    t = paddle.to_tensor([int(flag)], dtype="int64")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _combine(out: Outcomes, size: int) -> Outcomes:
    """Every rank's outcomes merged: each image was set by the rank that evaluated it."""
    if size == 1:
        return out
    import paddle
    import paddle.distributed as dist

    merged = []
    for array in (out.flags, out.diffs, np.array([out.seconds])):
        t = paddle.to_tensor(array)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        merged.append(t.numpy())
    return Outcomes(merged[0], merged[1], float(merged[2][0]))


def run(
    dataset: EvalImages,
    model,
    *,
    batch_size: int = 32,
    workers: int = 2,
    reference: Reference | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> Outcomes:
    """Evaluate on this rank's shard and return everyone's outcomes (identical on all ranks).

    Without ``skip_bad`` all ranks stop after the batch in which any rank met an unreadable
    image. DistributedBatchSampler pads the last shard with repeats of the first images; a
    repeat writes the same entry again, so every image counts once.
    """
    import paddle

    rank, size = world()
    sampler = paddle.io.DistributedBatchSampler(
        dataset, batch_size=batch_size, num_replicas=size, rank=rank, shuffle=False, drop_last=False
    )
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
    out = Outcomes.empty(len(dataset))
    bar = _progress(len(dataset), enabled=progress and rank == 0)
    start = time.perf_counter()
    for images, labels, indices, ok in loader:
        labels, indices, ok = labels.numpy(), indices.numpy(), ok.numpy().astype(bool)
        out.flags[indices, SEEN] = 1
        out.flags[indices[~ok], BAD] = 1
        if ok.any():
            _score(out, indices[ok], labels[ok], images.numpy()[ok], model, reference)
        if bar is not None:
            bar.update(min(len(indices) * size, bar.total - bar.n))
        if not skip_bad and _any_rank(not ok.all(), size):  # skip_bad is the same on every rank
            break
    out.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return _combine(out, size)


def _score(out: Outcomes, indices, labels, x: np.ndarray, model, reference: Reference | None) -> None:
    import paddle

    with paddle.no_grad():
        logits = model(paddle.to_tensor(x)).numpy()
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    out.flags[indices, TOP1] = top5[:, 0] == labels
    out.flags[indices, TOP5] = (top5 == labels[:, None]).any(axis=1)
    out.flags[indices, PRED] = top5[:, 0] + 1
    if reference is None:
        return
    ref = np.asarray(reference(x), dtype=np.float64)
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
