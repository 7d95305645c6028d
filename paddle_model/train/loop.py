"""The training loop of ``coat-train``: timm ``train.py``'s order of operations, in 1 to N processes.

Per update, as timm's ``train_one_epoch``: Mixup/CutMix of the batch (draws from a numpy
``RandomState`` seeded by the run's seed and the update number), forward, the loss (soft-target
CE with Mixup, label-smoothing CE with smoothing, else CE), backward, gradient clipping, the AdamW
update, the EMA update with the update count, ``scheduler.step_update``. Per epoch:
``scheduler.step(epoch + 1)``, evaluation on the val set (the model's and the EMA's top-1/top-5,
through :func:`paddle_model.evaluate.runner.run`), the ``last`` checkpoint and, on a better
top-1, the ``best`` one. Everything random depends on the seed and the epoch or update only, so
that resuming from any checkpoint reproduces the uninterrupted run (bit for bit on CPU with
``--workers 0``; the DataLoader's workers only read files, so they change nothing either).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F

from converter.cli import Terminated
from converter.writers import atomic_write, write_pdparams

from ..errors import CoatError
from ..evaluate.runner import BAD, SEEN, TOP1, TOP5, world
from ..evaluate.runner import run as evaluate_run
from ..factory import create_model
from ..hub import resolve_cli_weights
from ..transforms import EvalTransform
from ..variants import get_variant
from . import checkpoint
from .amp import autocast
from .clip import dispatch_clip_grad
from .data import (
    AugmentedImages,
    TrainImages,
    TrainSet,
    TrainTransform,
    batches,
    epoch_batches,
    rank_slice,
    sample_paths,
)
from .droppath import SeededMasks, install_drop_path, reset_calls
from .ema import ModelEma
from .loss import label_smoothing_cross_entropy, soft_target_cross_entropy
from .mixup import Mixup
from .optim import AdamW, param_groups_weight_decay
from .scheduler import CosineLRScheduler

LAST, BEST, LOG = "last.safetensors", "best.safetensors", "log.jsonl"
MODEL, MODEL_EMA, CONFIG, CURVES = "model.pdparams", "model_ema.pdparams", "config.json", "curves.png"
# every file a run writes in its folder: written by name from here, removed by --force from here
RUN_FILES = (LOG, LAST, BEST, MODEL, MODEL_EMA, CONFIG, CURVES)


class Diverged(CoatError):
    """The loss became non-finite (the command exits 1)."""


@dataclass
class TrainConfig:
    """A run's settings (JSON-able: they are recorded in every checkpoint)."""

    variant: str
    data: str
    val: str | None = None
    list_file: str | None = None
    val_list: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    img_size: int | None = None
    epochs: int = 300
    batch_size: int = 128  # global, over all ranks
    lr: float | None = None
    lr_base: float = 5e-4
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    sched: str = "cosine"
    sched_on_updates: bool = False
    weight_decay: float = 0.05
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    drop_path: float = 0.0
    clip_grad: float | None = None
    model_ema: bool = False
    model_ema_decay: float = 0.99996
    aug: str = "official"
    amp: str | None = None  # "bf16" (a GPU only); float32 by default
    seed: int = 0
    checkpoint_every: int = 0  # updates between mid-epoch checkpoints (0: at epoch ends only)
    skip_bad: bool = False
    classes: list[str] = field(default_factory=list)

    def scaled_lr(self) -> float:
        """``--lr``, or ``--lr-base`` x global batch / 512 (the official recipe's scaling)."""
        return self.lr if self.lr is not None else self.lr_base * self.batch_size / 512


def _seed32(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclass
class Run:
    """Everything a run holds while it trains."""

    cfg: TrainConfig
    out: Path
    model: paddle.nn.Layer
    net: paddle.nn.Layer  # the model, or its DataParallel wrapper
    optimizer: AdamW
    scheduler: CosineLRScheduler
    ema: ModelEma | None
    mixup: Mixup | None
    masks: SeededMasks
    train_set: TrainImages
    val_set: TrainImages | None
    rank: int
    world: int
    state: dict  # epoch, batch (next, within epoch), step (updates done), history, best


def eval_transform(cfg: TrainConfig) -> EvalTransform:
    v = get_variant(cfg.variant)
    size = v.img_size if cfg.img_size is None else cfg.img_size
    return EvalTransform(size, math.floor(size / v.crop_pct), v.crop_mode, v.interpolation)


def check_amp(cfg: TrainConfig) -> None:
    """Refuse an ``--amp`` this loop cannot honour: fp16, and any on the CPU (where paddle.amp
    would silently run float32)."""
    if cfg.amp == "fp16":
        raise CoatError(
            "--amp fp16 is not supported by coat-train yet (it needs loss scaling, and Paddle's GradScaler "
            "drives only Paddle's own optimizers); use --amp bf16"
        )
    autocast(cfg.amp)


def build(cfg: TrainConfig, out: Path, train: TrainSet, val: TrainSet | None, resuming: bool = False) -> Run:
    """The model (with ``cfg.weights``, a fresh head when the class count differs), optimizer,
    schedule, EMA and Mixup of a new run, before any update. ``resuming``: the checkpoint will
    replace every tensor, so ``cfg.weights`` is neither read nor fetched. The caller has run
    :func:`check_amp`."""
    rank, size = world()
    paddle.seed(cfg.seed)  # the fresh head's initialisation
    n = len(cfg.classes)
    pretrained = None if resuming else resolve_cli_weights(cfg.variant, cfg.weights)
    model = create_model(cfg.variant, pretrained=pretrained, num_classes=n)
    masks = SeededMasks(cfg.seed)
    if cfg.drop_path > 0:
        install_drop_path(model, masks, rate=cfg.drop_path)
    model.train()
    lr = cfg.scaled_lr()
    groups = param_groups_weight_decay(model, cfg.weight_decay)
    optimizer = AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    updates = len(train.samples) // cfg.batch_size
    per = updates if cfg.sched_on_updates else 1
    constant = cfg.sched == "constant"
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, cfg.epochs * per),
        lr_min=lr if constant else cfg.min_lr,
        warmup_t=cfg.warmup_epochs * per,
        warmup_lr_init=cfg.warmup_lr,
        t_in_epochs=not cfg.sched_on_updates,
    )
    ema = ModelEma(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(cfg.mixup, cfg.cutmix, label_smoothing=cfg.smoothing, num_classes=n)
    tf = eval_transform(cfg)
    net = paddle.DataParallel(model) if size > 1 else model
    return Run(
        cfg,
        out,
        model,
        net,
        optimizer,
        scheduler,
        ema,
        mixup,
        masks,
        _train_images(cfg, train, tf),
        TrainImages(val.samples, tf) if val is not None else None,
        rank,
        size,
        {"epoch": 0, "batch": 0, "step": 0, "history": [], "best": None, "losses": []},
    )


def _train_images(cfg: TrainConfig, train: TrainSet, tf: EvalTransform) -> TrainImages:
    """``--aug official``: timm's train transform, each image's draws from (seed, epoch, index);
    ``--aug none``: the eval transform."""
    if cfg.aug == "official":
        return AugmentedImages(train.samples, TrainTransform(tf.size), tf.size, cfg.seed)
    return TrainImages(train.samples, tf)


def save_checkpoint(r: Run, name: str = LAST) -> None:
    if r.rank == 0:
        checkpoint.save(
            r.out / name, r.model, r.optimizer, r.scheduler, r.ema, {"config": asdict(r.cfg), **r.state}
        )


class _Interrupts:
    """SIGINT and SIGTERM noted, not raised: the loop stops at the next step boundary, after a
    checkpoint, with :meth:`stop` (KeyboardInterrupt or converter.cli's Terminated)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.asked: int | None = None  # the signal received
        self.previous: dict = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def _note(self, signum, frame) -> None:
        self.asked = self.asked or signum

    def stop(self) -> None:
        """Raise what the signal received means to the command wrapper (exit 130 or 143)."""
        raise Terminated if self.asked == signal.SIGTERM else KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        for s, previous in self.previous.items():
            signal.signal(s, previous)


def _loss(r: Run, x: paddle.Tensor, y: paddle.Tensor, step: int) -> paddle.Tensor:
    if r.mixup is not None:
        params = r.mixup.draw(np.random.RandomState(_seed32(r.cfg.seed, step)), tuple(x.shape))
        x, target = r.mixup.apply(x, y, params)
        return soft_target_cross_entropy(r.net(x), target)
    if r.cfg.smoothing > 0:
        return label_smoothing_cross_entropy(r.net(x), y, r.cfg.smoothing)
    return F.cross_entropy(r.net(x), y)


def _usable(r: Run, x, labels, indices, ok, log: Callable[[dict], None]):
    """The batch without its unreadable images (``--skip-bad``, each logged), or the error."""
    if ok.all():
        return x, labels, indices
    bad = [int(i) for i in indices[~ok]]
    if not r.cfg.skip_bad:
        path = r.train_set.samples[bad[0]].path
        raise CoatError(
            f"{path}: {r.train_set.failure(bad[0])} (fix the data, or pass --skip-bad to leave it out)"
        )
    for i in bad:
        log({"kind": "skipped", "file": r.train_set.samples[i].path, "why": r.train_set.failure(i)})
    keep = ok.copy()
    if r.mixup is not None and keep.sum() % 2:  # Mixup pairs the batch with its flip
        keep[np.flatnonzero(keep)[-1]] = False
    return x[keep], labels[keep], indices[keep]


def _mean_over_ranks(value: float, size: int) -> float:
    if size == 1:
        return value
    import paddle.distributed as dist

    t = paddle.to_tensor([value], dtype="float64")
    dist.all_reduce(t)
    return float(t.item()) / size


def evaluate(r: Run, weights: paddle.nn.Layer) -> tuple[float, float]:
    """(top-1, top-5) in percent on the val set."""
    weights.eval()
    try:
        out = evaluate_run(r.val_set, weights, batch_size=r.cfg.batch_size, workers=0, progress=False)
    finally:
        weights.train()
    bad = np.flatnonzero(out.flags[:, BAD])
    if len(bad) and not r.cfg.skip_bad:
        path = r.val_set.samples[int(bad[0])].path
        raise CoatError(f"{path}: {r.val_set.failure(int(bad[0]))} (fix the val data, or pass --skip-bad)")
    scored = (out.flags[:, SEEN] == 1) & (out.flags[:, BAD] == 0)
    if not scored.any():
        raise CoatError("no val image could be read")
    return 100.0 * out.flags[scored, TOP1].mean(), 100.0 * out.flags[scored, TOP5].mean()


def _ema_model(r: Run) -> paddle.nn.Layer:
    model = create_model(r.cfg.variant, num_classes=len(r.cfg.classes))
    current = model.state_dict()
    with paddle.no_grad():
        for key, value in r.ema.state_dict().items():
            current[key].set_value(value)
    return model


def train(r: Run, log: Callable[[dict], None], workers: int = 0, progress: bool = False) -> dict:
    """Train from ``r.state`` to the end; returns the last epoch's record."""
    cfg = r.cfg
    with _Interrupts() as interrupts:
        while r.state["epoch"] < cfg.epochs:
            epoch = r.state["epoch"]
            plan = epoch_batches(len(r.train_set), cfg.batch_size, cfg.seed, epoch)
            start = r.state["batch"]
            if isinstance(r.train_set, AugmentedImages):
                r.train_set.epoch = epoch  # before the workers get their copy
            mine = [rank_slice(b, r.rank, r.world) for b in plan[start:]]
            bar = _bar(len(plan), start, epoch, progress and r.rank == 0)
            losses, began = r.state.setdefault("losses", []), time.perf_counter()
            for i, (x, labels, indices, ok) in enumerate(batches(r.train_set, mine, workers), start):
                x, labels, indices = _usable(r, x, labels, indices, ok, log)
                tick = time.perf_counter()
                step = r.state["step"] + 1
                r.masks.step = step
                reset_calls(r.model)
                lr = r.optimizer.param_groups[0]["lr"]
                with autocast(cfg.amp):
                    loss = _loss(r, paddle.to_tensor(x), paddle.to_tensor(labels), step)
                value = _mean_over_ranks(float(loss), r.world)
                if not math.isfinite(value):
                    raise _diverged(r, step, epoch, i, sample_paths(r.train_set, indices), value)
                loss.backward()
                norm = None
                if cfg.clip_grad is not None:
                    norm = dispatch_clip_grad(r.model.parameters(), cfg.clip_grad, "norm")
                r.optimizer.step()
                r.optimizer.clear_grad()
                if r.ema is not None:
                    r.ema.update(r.model, step=step)
                r.scheduler.step_update(step)
                r.state.update(step=step, batch=i + 1)
                seconds = time.perf_counter() - tick
                images = len(indices) * r.world
                losses.append(value)
                log(
                    {
                        "kind": "step",
                        "epoch": epoch,
                        "batch": i,
                        "step": step,
                        "loss": value,
                        "lr": lr,
                        "grad_norm": norm,
                        "images_per_s": images / seconds if seconds > 0 else None,
                    }
                )
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}", img_s=f"{images / seconds:.1f}")
                    bar.update(1)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save_checkpoint(r)
                if interrupts.asked:
                    save_checkpoint(r)
                    interrupts.stop()
            if bar is not None:
                bar.close()
            _end_epoch(r, epoch, losses, time.perf_counter() - began, log)
            if interrupts.asked:
                interrupts.stop()
    return r.state["history"][-1] if r.state["history"] else {}


def _end_epoch(r: Run, epoch: int, losses: list[float], seconds: float, log: Callable[[dict], None]) -> dict:
    """Schedule, evaluate, log the epoch's record, then checkpoint: logged first, so that a
    checkpoint past this epoch never exists without its row (a resume drops rows past the
    checkpoint and logs them again)."""
    r.scheduler.step(epoch + 1)
    record = {"kind": "epoch", "epoch": epoch, "step": r.state["step"], "seconds": seconds}
    record["train_loss"] = float(np.mean(losses)) if losses else None
    if r.val_set is not None:
        record["top1"], record["top5"] = evaluate(r, r.model)
        if r.ema is not None:
            record["ema_top1"], record["ema_top5"] = evaluate(r, _ema_model(r))
    r.state["history"].append(record)
    log(record)
    r.state.update(epoch=epoch + 1, batch=0, losses=[])
    best = r.state["best"]
    improved = "top1" in record and (best is None or record["top1"] > best)
    if improved:
        r.state["best"] = record["top1"]
    save_checkpoint(r)
    if improved:
        save_checkpoint(r, BEST)
    return record


def _diverged(r: Run, step: int, epoch: int, batch: int, files: list[str], value: float) -> Diverged:
    last = r.out / LAST
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    shown = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    return Diverged(
        f"the loss is {value} at step {step} (epoch {epoch}, batch {batch}; files {shown}); "
        f"training stopped, {kept}; lower --lr or add --clip-grad"
    )


def _bar(total: int, start: int, epoch: int, enabled: bool):
    if not enabled:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=f"epoch {epoch}", unit="step", file=sys.stderr)


def finish(r: Run) -> list[Path]:
    """Write the run's results beside its checkpoints: ``model.pdparams`` (and
    ``model_ema.pdparams``), ``config.json`` with the class names, and ``curves.png``."""
    if r.rank != 0:
        return []
    written = [r.out / MODEL]
    write_pdparams({k: v.numpy() for k, v in r.model.state_dict().items()}, written[0], force=True)
    if r.ema is not None:
        written.append(r.out / MODEL_EMA)
        write_pdparams({k: v.numpy() for k, v in r.ema.state_dict().items()}, written[-1], force=True)
    config = {
        "variant": r.cfg.variant,
        "num_classes": len(r.cfg.classes),
        "label_names": r.cfg.classes,
        "img_size": eval_transform(r.cfg).size,
    }
    written.append(r.out / CONFIG)
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(written[-1], lambda f: f.write(text.encode()), force=True)
    plot = write_curves(r.out / LOG, r.out / CURVES)
    if plot is not None:
        written.append(plot)
    return written


def write_curves(log: Path, path: Path) -> Path | None:
    """A PNG of the training loss per step and the val accuracy per epoch; None without
    matplotlib (the caller says so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [(row["step"], row["loss"]) for row in rows if row.get("kind") == "step"]
    epochs = [row for row in rows if row.get("kind") == "epoch"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        left.plot(*zip(*steps), lw=1)
    left.set(xlabel="update", ylabel="training loss", title="loss")
    for key in ("top1", "top5", "ema_top1"):
        points = [(row["epoch"] + 1, row[key]) for row in epochs if row.get(key) is not None]
        if points:
            right.plot(*zip(*points), marker="o", label=key)
    right.set(xlabel="epoch", ylabel="val accuracy (%)", title="accuracy")
    if right.lines:
        right.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), force=True)
    plt.close(fig)
    return path
