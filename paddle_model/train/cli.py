"""The command line of ``python -m paddle_model.train`` (console script ``coat-train``).

timm ``train.py``'s option names where they exist; defaults are the official recipe's, and
``--recipe finetune`` sets the official fine-tune's values (it prints which). Parse -> check ->
:mod:`.loop` -> print.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from converter.cli import ArgumentParser, command, fail
from converter.writers import atomic_write

from ..errors import CoatError
from ..hub import CLI_PRETRAINED, HF_PREFIX, WEIGHTS_HELP
from ..variants import VARIANTS, get_variant
from . import checkpoint
from .data import check_classes, read_split
from .loop import CURVES, LAST, LOG, RUN_FILES, Diverged, TrainConfig, build, check_amp, finish, train

DESCRIPTION = "Fine-tune a CoaT in Paddle on your own images (ImageFolder), resumably."
FINETUNE = {"lr": 5e-6, "sched": "constant", "warmup_epochs": 0, "weight_decay": 1e-8}
# settings a resumed run takes from its checkpoint; giving another value is refused
RECIPE_KEYS = [f.name for f in fields(TrainConfig) if f.name not in ("classes",)]
PATH_KEYS = ("data", "val", "list_file", "val_list")  # stored resolved (and --weights when a file)


def build_parser(defaults: bool = True) -> ArgumentParser:
    d = TrainConfig(variant="", data="")
    kw = {} if defaults else {"argument_default": argparse.SUPPRESS}
    p = ArgumentParser(prog="coat-train", description=DESCRIPTION, **kw)

    def opt(name: str, **k):
        dest = name.lstrip("-").replace("-", "_")
        if defaults and "default" not in k and "action" not in k:
            k["default"] = getattr(d, dest, None)
        elif not defaults:
            k.pop("default", None)
        p.add_argument(name, **k)

    p.add_argument(
        "data", nargs="?", help="ImageFolder root (ROOT/<class>/<image>), or with --list the list's root"
    )
    opt("--list", dest="list_file", help="file list '<relative path> <label>' per line")
    opt("--val", help="val ImageFolder root (same class folders), evaluated after every epoch")
    opt("--val-list", help="val file list (paths relative to --val)")
    opt("--variant", choices=list(VARIANTS))
    opt("--weights", help=WEIGHTS_HELP + "; without it: random init")
    opt(
        "--num-classes",
        type=int,
        help="must equal the number of class folders (a fresh head if it differs from the weights')",
    )
    opt("--img-size", type=int, help="training and val input size (default: the variant's)")
    opt("--epochs", type=int)
    opt("--batch-size", type=int, help="the global batch, over all processes")
    opt("--lr", type=float, help="absolute learning rate (overrides --lr-base)")
    opt("--lr-base", type=float, help="lr = lr-base x global batch / 512")
    opt("--warmup-epochs", type=int)
    opt("--warmup-lr", type=float)
    opt("--min-lr", type=float)
    opt("--sched", choices=["cosine", "constant"])
    opt("--sched-on-updates", action="store_true", help="step the schedule per update, not per epoch")
    opt("--weight-decay", type=float)
    opt("--smoothing", type=float)
    opt("--mixup", type=float, help="Mixup alpha (0: off)")
    opt("--cutmix", type=float, help="CutMix alpha (0: off)")
    opt("--drop-path", type=float)
    opt("--clip-grad", type=float, help="clip the gradients' global norm to this (torch's rule)")
    opt("--model-ema", action="store_true")
    opt("--model-ema-decay", type=float)
    opt(
        "--aug",
        choices=["official", "none"],
        help="official: timm's RandomResizedCrop, flip, RandAugment m9-mstd0.5, erasing 0.25; "
        "none: the eval transform (for debugging and exact checks)",
    )
    opt("--amp", choices=["bf16", "fp16"], help="mixed precision (a GPU; float32 by default)")
    opt("--seed", type=int)
    opt("--checkpoint-every", type=int, help="also checkpoint every N updates (0: at epoch ends)")
    opt("--skip-bad", action="store_true", help="leave unreadable images out, each listed in the log")
    p.add_argument(
        "--workers", type=int, **({"default": 0} if defaults else {}), help="data-loading processes"
    )
    p.add_argument("--output", type=Path, help="the run's folder (created; must not exist)")
    p.add_argument(
        "--resume", nargs="?", const="", type=str, help="continue the run in DIR (default: --output)"
    )
    p.add_argument(
        "--force", action="store_true", help="train into an existing --output, replacing its files"
    )
    p.add_argument("--recipe", choices=["official", "finetune"], help="finetune: " + json.dumps(FINETUNE))
    p.add_argument("--json", action="store_true", help="print the final result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _given(argv: Sequence[str] | None) -> set[str]:
    """The options given on the command line (not their defaults)."""
    return set(vars(build_parser(defaults=False).parse_known_args(argv)[0]))


@command
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    given = _given(argv)
    say = print if not args.json else (lambda *a, **k: print(*a, file=sys.stderr, **k))
    if _rank() != 0:  # one voice for a distributed run

        def say(*a, **k) -> None:
            return None

    if args.resume is not None:
        out = Path(args.resume or args.output or "")
        if not str(out):
            raise CoatError("--resume needs the run's folder: --resume DIR or --output DIR")
        if args.resume and args.output is not None and Path(args.output).resolve() != out.resolve():
            raise CoatError(
                f"--resume {args.resume} and --output {args.output}: a resumed run writes into its own "
                "folder; give one of them"
            )
        cfg, ckpt = _resumed(out, args, given)
    else:
        cfg, ckpt, out = _fresh(args, given, say), None, args.output
    try:
        return _train(cfg, out, ckpt, args, say)
    except Diverged as e:
        return fail(str(e), 1)


def _fresh(args, given: set[str], say) -> TrainConfig:
    if args.data is None or args.variant is None or args.output is None:
        raise CoatError("give DATA, --variant and --output (or --resume DIR to continue a run)")
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if args.recipe == "finetune":
        chosen = {k: v for k, v in FINETUNE.items() if k not in given}
        values.update(chosen)
        listed = ", ".join(f"{k}={v}" for k, v in chosen.items()) or "nothing (all given)"
        say(f"--recipe finetune set {listed}")
    if args.workers < 0:
        raise CoatError(f"--workers {args.workers}: must be at least 0")
    cfg = TrainConfig(**_settled({**values, "data": args.data}))
    check_settings(cfg, _world_size())
    if args.output.exists() and not args.force and _rank() == 0:  # rank 0 creates it
        raise CoatError(
            f"{args.output}: already exists; pass --resume to continue its run or --force to replace it"
        )
    return cfg


def _settled(values: dict) -> dict:
    """Settings as a run records them: paths resolved against the current folder (a resume may
    start elsewhere), ``--weights FILE`` too (``pretrained`` and ``hf-hub:`` as given)."""
    values = dict(values)
    for key in PATH_KEYS:
        if values.get(key) is not None:
            values[key] = str(Path(values[key]).resolve())
    weights = values.get("weights")
    if weights is not None and weights != CLI_PRETRAINED and not str(weights).startswith(HF_PREFIX):
        values["weights"] = str(Path(weights).resolve())
    return values


def check_settings(cfg: TrainConfig, ranks: int) -> None:
    """Refuse settings the run would fail on later (after its folder was made), one line each."""
    if cfg.batch_size < 1 or cfg.epochs < 1:
        raise CoatError("--batch-size and --epochs must be at least 1")
    if cfg.batch_size % ranks:
        raise CoatError(
            f"--batch-size {cfg.batch_size} (the global batch) must be a multiple of the {ranks} processes"
        )
    per_process = cfg.batch_size // ranks
    if (cfg.mixup > 0 or cfg.cutmix > 0) and per_process % 2:
        raise CoatError(
            f"--batch-size {cfg.batch_size}: Mixup/CutMix pair each process's batch with its flip, so "
            f"the batch per process ({per_process}) must be even; change --batch-size or pass "
            "--mixup 0 --cutmix 0"
        )
    smallest = get_variant(cfg.variant).min_input_size
    if cfg.img_size is not None and cfg.img_size < smallest:
        raise CoatError(f"--img-size {cfg.img_size}: {cfg.variant} takes images of at least {smallest} px")
    at_least_zero = ["lr_base", "warmup_lr", "min_lr", "weight_decay", "mixup", "cutmix"]
    at_least_zero += ["warmup_epochs", "checkpoint_every"] + (["lr"] if cfg.lr is not None else [])
    for key in at_least_zero:
        if not getattr(cfg, key) >= 0:  # `not >=`: NaN too
            raise CoatError(f"--{key.replace('_', '-')} {getattr(cfg, key)}: must be at least 0")
    for key in ("smoothing", "drop_path", "model_ema_decay"):
        if not 0 <= getattr(cfg, key) < 1:
            raise CoatError(f"--{key.replace('_', '-')} {getattr(cfg, key)}: must be in [0, 1)")
    if cfg.clip_grad is not None and not cfg.clip_grad > 0:
        raise CoatError(f"--clip-grad {cfg.clip_grad}: must be above 0")


def _resumed(out: Path, args, given: set[str]):
    path = out / LAST
    if not path.is_file():
        raise CoatError(f"{out}: no {LAST} to resume from; start the run without --resume")
    ckpt = checkpoint.load(path)
    saved = ckpt.state["config"]
    asked = _settled({k: getattr(args, k) for k in given & set(RECIPE_KEYS)} | {"data": args.data})
    differ = [k for k, v in asked.items() if v is not None or k != "data"]
    differ = [k for k in differ if not _same(k, asked[k], saved)]
    if differ:
        raise CoatError(
            f"{path}: the run was started with other {', '.join(sorted(differ))}; "
            "resume with its settings (give only --resume DIR), or start a new run"
        )
    return TrainConfig(**saved), ckpt


def _same(key: str, value, saved: dict) -> bool:
    """Whether a setting given to a resume equals the run's (an image size by its value in use)."""
    if key == "img_size":
        default = get_variant(saved["variant"]).img_size
        return (default if value is None else value) == (default if saved[key] is None else saved[key])
    return value == saved.get(key)


def _world_size() -> int:
    """The number of processes under ``paddle.distributed.launch`` (1 outside it)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def _rank() -> int:
    """This process's rank under ``paddle.distributed.launch`` (0 outside it), before any setup."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def _prepare_output(out: Path, resume: bool) -> None:
    """A new run's folder (an existing one only with --force, checked before): our files removed.
    Rank 0 writes every file of the run; the other ranks only read."""
    if resume or _rank() != 0:
        return
    if out.exists() and not out.is_dir():
        raise CoatError(f"{out}: is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _train(cfg: TrainConfig, out: Path, ckpt, args, say) -> int:
    root = Path(cfg.data)
    train_set = read_split(root, cfg.list_file, cfg.skip_bad, "training")
    val_set = read_split(Path(cfg.val), cfg.val_list, cfg.skip_bad, "val") if cfg.val else None
    n = check_classes(train_set, val_set, cfg.num_classes, root)
    if len(train_set.samples) < cfg.batch_size:
        raise CoatError(
            f"{root}: {len(train_set.samples)} images, fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size"
        )
    if ckpt is None:
        cfg.classes = train_set.classes
    elif cfg.classes != train_set.classes:
        raise CoatError(f"{root}: its class folders changed since the run started; resume on the same data")
    check_amp(cfg)  # before anything is written
    _prepare_output(out, ckpt is not None)
    run = build(cfg, out, train_set, val_set, resuming=ckpt is not None)
    log_path = out / LOG
    if ckpt is not None:
        checkpoint.restore(ckpt, run.model, run.optimizer, run.scheduler, run.ema, str(out / LAST))
        run.state.update({k: ckpt.state[k] for k in run.state if k in ckpt.state})
        if run.rank == 0:
            _truncate_log(log_path, run.state["step"], run.state["epoch"])
    skipped = train_set.data.skipped + (val_set.data.skipped if val_set else [])
    with open(log_path, "a") as log_file:

        def log(row: dict) -> None:
            if run.rank == 0:
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()

        if ckpt is None:
            log({"kind": "start", "config": asdict(cfg), "world": run.world, "lr": cfg.scaled_lr()})
            for item, why in skipped:
                log({"kind": "skipped", "file": item, "why": why})
        say(
            f"training {cfg.variant} on {len(train_set.samples)} images of {n} classes; "
            f"global batch {cfg.batch_size} over {run.world} process(es), lr {cfg.scaled_lr():g}"
            + ("" if cfg.lr is not None else f" (= {cfg.lr_base:g} x {cfg.batch_size} / 512)")
        )
        last = train(run, log, workers=args.workers, progress=not (args.quiet or args.json))
    written = finish(run)
    if run.rank == 0 and not (out / CURVES).exists():
        say("no curves.png: matplotlib is not installed (pip install matplotlib)")
    result = {"output": str(out), "epochs": cfg.epochs, "steps": run.state["step"], "last_epoch": last}
    result["files"] = [str(p) for p in written]
    if run.rank == 0:
        if args.json:
            print(json.dumps(result))
        else:
            say(f"done: {run.state['step']} updates; {json.dumps(last)}")
            say("wrote " + ", ".join(p.name for p in written) + f" in {out}")
    return 0


def _truncate_log(path: Path, step: int, epoch: int) -> None:
    """Keep the log's rows up to the checkpoint (a killed run may have logged steps past it)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if row.get("kind") == "step" and row["step"] > step:
            continue
        if row.get("kind") == "epoch" and row["epoch"] >= epoch:
            continue
        kept.append(line)
    text = "".join(line + "\n" for line in kept)
    atomic_write(path, lambda f: f.write(text.encode()), force=True)
