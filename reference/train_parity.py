"""Training at parity: N steps of the official recipe in timm and in Paddle, compared at every step.

    python -m reference.train_parity coat_lite_tiny --steps 50 [--dtype float64|float32]
        [--size 32] [--batch 4] [--recipe official|finetune] [--plot FILE] [--json]

Both sides start from the same seeded weights (timm's model, saved as an official checkpoint and
converted by this project's converter), see the same batches (seeded images and labels), the
same Mixup/CutMix draws (timm's ``Mixup`` draws from numpy's global RNG seeded per step; the
Paddle side's :meth:`Mixup.draw` from a ``RandomState`` of that seed) and the same drop-path
masks (one seeded stream, keyed by block and call, installed into both models). The timm side is
timm's own code: ``torch.optim.AdamW`` over ``param_groups_weight_decay``, ``CosineLRScheduler``,
``Mixup``, ``SoftTargetCrossEntropy``, ``clip_grad_norm_``, ``ModelEmaV3``; the Paddle side is
:mod:`paddle_model.train`. Per step: both losses and lrs, the gradient norm, and the largest
relative difference (max |d| / max |ref| per tensor, the worst tensor) of the weights, the AdamW
moments and the EMA weights. The schedule is the recipe's, compressed to the run: warmup over
the first fifth of the updates from ``warmup_lr``, then cosine to ``min_lr``, stepped per update.
In float64 timm's LayerNorms get Paddle's float32-rounded epsilon (:func:`float32_layer_norm_eps`).
Exit 1 when a step is above the gates. float64: losses 1e-10; weights, AdamW moments and EMA
1e-9, each tensor on its own scale; the lr equal. float32: losses 1e-4; weights and EMA 1e-4 at the model's
scale (max |d| over all tensors / max |ref| over all tensors): per tensor, float32 cannot hold
1e-4, because AdamW turns a gradient element near eps into a step of about lr whatever its
rounding, so the two frameworks' float32 rounding of such gradients moves a tensor whose
weights are of the order of the lr (the seeded patch embeddings, small biases) by up to ~1e-3
of itself; both measures are printed.
"""

from __future__ import annotations

import warnings

# paddle's C++-extension loader warns on stderr at import; the command's errors are one line
warnings.filterwarnings("ignore", message="No ccache found")

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import paddle
import timm
import torch
from timm.data import Mixup as TimmMixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay as timm_param_groups
from timm.scheduler import CosineLRScheduler as TimmCosine
from timm.utils import ModelEmaV3

from converter.cli import command
from converter.errors import CoatError
from converter.layout import coat_layout
from converter.pipeline import convert_checkpoint
from converter.train_state import read_training_state
from converter.variants import VARIANTS, get_variant
from paddle_model import train
from paddle_model.factory import create_model
from paddle_model.weights import read_weights

from .checkpoints import write_official_checkpoint
from .timm_model import timm_from_checkpoint

GATES = {  # dtype -> (loss, weights/moments/EMA) max relative difference
    "float64": (1e-10, 1e-9),
    "float32": (1e-4, 1e-4),
}


@dataclass(frozen=True)
class Recipe:
    """The hyper-parameters both sides train with (the official recipe's, by default)."""

    lr: float = 5e-4  # the recipe's 5e-4 x global batch / 512, taken at a global batch of 512
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    warmup_fraction: float = 0.2  # the run's share of warmup updates (5 of 300 epochs in the recipe)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    drop_path: float = 0.1
    clip: float | None = 5.0
    clip_mode: str = "norm"
    ema_decay: float | None = 0.99996


RECIPES = {
    "official": Recipe(),
    # fine-tuning at 384: constant lr 5e-6, weight decay 1e-8, no warmup
    "finetune": Recipe(lr=5e-6, warmup_lr=5e-6, min_lr=5e-6, warmup_fraction=0.0, weight_decay=1e-8),
}


@dataclass(frozen=True)
class Mutation:
    """Changes to the Paddle side only, made through its parts' parameters (none by default)."""

    decay_cls_token1: bool = False
    warmup_shift: int = 0
    eps: float | None = None
    paddle_clip: bool = False
    smoothing: float | None = None
    ema_decay_delta: float = 0.0
    mask_seed_delta: int = 0
    box_shift: int = 0
    ulp: bool = False  # every starting weight one ulp up (the control)


MUTATIONS = {
    "cls_token1 decayed": Mutation(decay_cls_token1=True),
    "warmup shifted by one update": Mutation(warmup_shift=1),
    "AdamW eps 1e-6": Mutation(eps=1e-6),
    "Paddle's own clip semantics": Mutation(paddle_clip=True),
    "smoothing 0 vs 0.1": Mutation(smoothing=0.0),
    "EMA decay off by 1e-5": Mutation(ema_decay_delta=-1e-5),
    "a drop-path mask not shared": Mutation(mask_seed_delta=1),
    "a Mixup box off by one pixel": Mutation(box_shift=1),
}


@dataclass(frozen=True)
class Setup:
    variant: str
    steps: int
    dtype: str = "float64"
    size: int = 32
    batch: int = 4
    recipe: Recipe = field(default_factory=Recipe)
    seed: int = 0

    @property
    def warmup_t(self) -> int:
        return round(self.steps * self.recipe.warmup_fraction)


@dataclass
class StepState:
    """What one side reports after one step (numpy tensors in torch's layout, by name)."""

    loss: float
    lr: float
    grad_norm: float | None
    cutmix: bool
    weights: dict[str, np.ndarray]
    exp_avg: dict[str, np.ndarray]
    exp_avg_sq: dict[str, np.ndarray]
    ema: dict[str, np.ndarray]


@dataclass
class StepReport:
    step: int
    loss: tuple[float, float]
    lr: tuple[float, float]
    grad_norm: tuple[float | None, float | None]
    cutmix: bool  # the Paddle side's draw was CutMix
    loss_rel: float
    weights_rel: float
    exp_avg_rel: float
    exp_avg_sq_rel: float
    ema_rel: float
    worst: str  # the tensor with the largest weight difference
    model_weights_rel: float = 0.0  # at the model's scale (max |d| / max |ref| over all tensors)
    model_ema_rel: float = 0.0
    ok: bool = True

    def line(self) -> str:
        (a, b), (la, lb) = self.loss, self.lr
        norm = "" if self.grad_norm[0] is None else f" |g| {self.grad_norm[0]:.6f}"
        return (
            f"step {self.step:3d}  loss {a:.12f} / {b:.12f} (rel {self.loss_rel:.1e})  lr {la:.6e} / {lb:.6e}"
            f"{norm}  weights {self.weights_rel:.1e} (model {self.model_weights_rel:.1e})"
            f"  m {self.exp_avg_rel:.1e}  v {self.exp_avg_sq_rel:.1e}"
            f"  ema {self.ema_rel:.1e}{'' if self.ok else '  FAIL'}"
        )


def _rel(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, str]:
    """The worst tensor's max |d| / max |ref| (0 / 0 is 0, d / 0 is inf), and its name."""
    worst, name = 0.0, ""
    for key, r in ref.items():
        d = float(np.abs(got[key].astype(np.float64) - r).max()) if r.size else 0.0
        m = float(np.abs(r).max()) if r.size else 0.0
        rel = d / m if m > 0 else (0.0 if d == 0 else float("inf"))
        if np.isnan(d):
            rel = float("inf")
        if rel > worst or not name:
            worst, name = rel, key
    return worst, name


def _model_rel(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """max |d| over all tensors / max |ref| over all tensors: the difference at the model's scale."""
    if not ref:
        return 0.0
    ds = [float(np.abs(got[k].astype(np.float64) - r).max()) for k, r in ref.items()]
    if any(np.isnan(ds)):  # Python's max() would pass over a NaN
        return float("inf")
    d, m = max(ds), max(float(np.abs(r).max()) for r in ref.values())
    return d / m if m > 0 else (0.0 if d == 0 else float("inf"))


def compare_step(step: int, ref: StepState, got: StepState, dtype: str) -> StepReport:
    """One step of two sides, judged by the gates of ``dtype``."""
    loss_gate, gate = GATES[dtype]
    loss_rel = abs(got.loss - ref.loss) / abs(ref.loss) if ref.loss else abs(got.loss)
    weights_rel, worst = _rel(ref.weights, got.weights)
    m_rel, _ = _rel(ref.exp_avg, got.exp_avg)
    v_rel, _ = _rel(ref.exp_avg_sq, got.exp_avg_sq)
    ema_rel, _ = _rel(ref.ema, got.ema)
    report = StepReport(
        step, (ref.loss, got.loss), (ref.lr, got.lr), (ref.grad_norm, got.grad_norm), got.cutmix,
        loss_rel, weights_rel, m_rel, v_rel, ema_rel, worst,
        _model_rel(ref.weights, got.weights), _model_rel(ref.ema, got.ema),
    )  # fmt: skip
    if dtype == "float64":  # every tensor on its own scale, the moments too
        gated = [weights_rel, ema_rel, m_rel, v_rel]
    else:  # float32: at the model's scale (see the module docstring)
        gated = [report.model_weights_rel, report.model_ema_rel]
    report.ok = bool(np.isfinite(loss_rel)) and loss_rel <= loss_gate and all(x <= gate for x in gated)
    report.ok = report.ok and (dtype != "float64" or ref.lr == got.lr)
    return report


# --- the shared draws ----------------------------------------------------------------------


def batch(setup: Setup, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Step ``step``'s images [B, 3, S, S] (float32 values, cast by each side) and labels."""
    rng = np.random.default_rng([setup.seed, step])
    x = rng.standard_normal((setup.batch, 3, setup.size, setup.size)).astype(np.float32)
    return x, rng.integers(0, 1000, setup.batch).astype(np.int64)


def mix_seed(setup: Setup, step: int) -> int:
    return setup.seed * 100_003 + step


class _TorchDropPath(torch.nn.Module):
    """timm's DropPath arithmetic (``x * (mask / keep)``) with masks from a mask source."""

    def __init__(self, p: float, name: str, source) -> None:
        super().__init__()
        self.p, self.layer_name, self.source, self.calls = p, name, source, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = self.source(self.layer_name, self.calls, x.shape[0], keep)
        self.calls += 1
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = torch.from_numpy(np.asarray(mask)).to(x.dtype).reshape(shape)
        return x * random_tensor.div_(keep)


def float32_layer_norm_eps(model: torch.nn.Module) -> None:
    """Round every LayerNorm's epsilon to float32, as Paddle's ``layer_norm`` op holds it.

    Paddle passes epsilon as a float32 attribute (1e-5 becomes 1e-5 * (1 - 2.5e-8)); in float64
    that alone moves the forward by up to ~1e-11 on these weights, which AdamW amplifies by
    lr / eps in near-zero gradients. The harness compares the training parts, so it gives timm
    the epsilon Paddle can have; it changes nothing in float32.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = float(np.float32(module.eps))


def install_torch_drop_path(model: torch.nn.Module, rate: float, source) -> list[str]:
    """Replace every timm block's ``drop_path`` (DropPath or Identity) by :class:`_TorchDropPath`."""
    names = []
    for name, module in model.named_modules():
        if isinstance(getattr(module, "drop_path", None), torch.nn.Module):
            module.drop_path = _TorchDropPath(rate, f"{name}.drop_path", source)
            names.append(f"{name}.drop_path")
    return names


# --- the two sides -------------------------------------------------------------------------


def _unique_names(variant: str) -> dict[str, bool]:
    """Each tensor once (the shared MLP as ``mlp2``), with whether torch stores it transposed."""
    return {k: s.transposed for k, s in coat_layout(get_variant(variant)).tensors.items()}


class TimmSide:
    """timm's model trained by timm's and torch's own components."""

    def __init__(self, setup: Setup, checkpoint: Path) -> None:
        r, self.setup = setup.recipe, setup
        self.dtype = torch.float64 if setup.dtype == "float64" else torch.float32
        self.model = timm_from_checkpoint(checkpoint, setup.variant, img_size=setup.size).to(self.dtype)
        float32_layer_norm_eps(self.model)
        self.masks = train.SeededMasks(setup.seed)
        self.drop_paths = install_torch_drop_path(self.model, r.drop_path, self.masks)
        self.model.train()
        groups = timm_param_groups(
            self.model, r.weight_decay, no_weight_decay_list=self.model.no_weight_decay()
        )
        self.optimizer = torch.optim.AdamW(groups, lr=r.lr, betas=r.betas, eps=r.eps)
        self.scheduler = TimmCosine(
            self.optimizer,
            t_initial=max(1, setup.steps - setup.warmup_t),
            lr_min=r.min_lr,
            warmup_t=setup.warmup_t,
            warmup_lr_init=r.warmup_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        self.mixup = TimmMixup(
            mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, prob=r.mix_prob, switch_prob=r.switch_prob,
            mode="batch", label_smoothing=r.smoothing, num_classes=1000,
        )  # fmt: skip
        self.loss_fn = SoftTargetCrossEntropy()
        self.ema = ModelEmaV3(self.model, decay=r.ema_decay) if r.ema_decay is not None else None
        self.updates = 0
        self.names = _unique_names(setup.variant)
        self.params = dict(self.model.named_parameters())

    def step(self, step: int) -> StepState:
        r = self.setup.recipe
        x, y = batch(self.setup, step)
        x, y = torch.from_numpy(x).to(self.dtype), torch.from_numpy(y)
        saved, default = np.random.get_state(), torch.get_default_dtype()
        np.random.seed(mix_seed(self.setup, step))
        torch.set_default_dtype(self.dtype)  # timm builds the soft targets in the default dtype
        try:
            x, target = self.mixup(x, y)
        finally:
            np.random.set_state(saved)
            torch.set_default_dtype(default)
        self.masks.step = step
        for m in self.model.modules():
            if isinstance(m, _TorchDropPath):
                m.calls = 0
        lr = self.optimizer.param_groups[0]["lr"]
        loss = self.loss_fn(self.model(x), target)
        self.optimizer.zero_grad()
        loss.backward()
        norm = None
        if r.clip is not None:
            if r.clip_mode == "norm":
                norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.clip))
            else:
                torch.nn.utils.clip_grad_value_(self.model.parameters(), r.clip)
        self.optimizer.step()
        self.updates += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.updates)
        self.scheduler.step_update(num_updates=self.updates)
        return self.state(loss.item(), lr, norm, False)  # timm's Mixup does not say which it drew

    def state(self, loss: float, lr: float, norm: float | None, cutmix: bool) -> StepState:
        weights = {k: self.params[k].detach().numpy().copy() for k in self.names}
        st = self.optimizer.state
        m = {k: st[self.params[k]]["exp_avg"].numpy().copy() for k in self.names if self.params[k] in st}
        v = {k: st[self.params[k]]["exp_avg_sq"].numpy().copy() for k in self.names if self.params[k] in st}
        ema = {}
        if self.ema is not None:
            own = self.ema.module.state_dict()
            ema = {k: own[k].numpy().copy() for k in self.names}
        return StepState(loss, lr, norm, cutmix, weights, m, v, ema)


class PaddleSide:
    """The Paddle model trained by :mod:`paddle_model.train`, changed by ``mutation`` if given."""

    def __init__(self, setup: Setup, weights: Path, mutation: Mutation = Mutation()) -> None:
        r, self.setup, self.mutation = setup.recipe, setup, mutation
        self.model = create_model(setup.variant, pretrained=weights)
        self.model.to(dtype=setup.dtype)
        if mutation.ulp:
            with paddle.no_grad():
                for p in self.model.parameters():
                    p.set_value(np.nextafter(p.numpy(), np.inf))
        self.masks = train.SeededMasks(setup.seed + mutation.mask_seed_delta)
        train.install_drop_path(self.model, self.masks, rate=r.drop_path)
        self.model.train()
        skip = set(train.no_weight_decay(self.model)) - (
            {"cls_token1"} if mutation.decay_cls_token1 else set()
        )
        groups = train.param_groups_weight_decay(self.model, r.weight_decay, skip)
        self.optimizer = train.AdamW(groups, lr=r.lr, betas=r.betas, eps=mutation.eps or r.eps)
        self.scheduler = train.CosineLRScheduler(
            self.optimizer,
            t_initial=max(1, setup.steps - setup.warmup_t),
            lr_min=r.min_lr,
            warmup_t=setup.warmup_t + mutation.warmup_shift,
            warmup_lr_init=r.warmup_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        smoothing = r.smoothing if mutation.smoothing is None else mutation.smoothing
        self.mixup = train.Mixup(r.mixup, r.cutmix, r.mix_prob, r.switch_prob, label_smoothing=smoothing)
        self.ema = None
        if r.ema_decay is not None:
            self.ema = train.ModelEma(self.model, decay=r.ema_decay + mutation.ema_decay_delta)
        self.updates = 0
        self.names = _unique_names(setup.variant)
        self.params = dict(self.model.named_parameters())

    def step(self, step: int) -> StepState:
        r, mutation = self.setup.recipe, self.mutation
        x, y = batch(self.setup, step)
        x, y = paddle.to_tensor(x.astype(self.setup.dtype)), paddle.to_tensor(y)
        draw = self.mixup.draw(np.random.RandomState(mix_seed(self.setup, step)), tuple(x.shape))
        if draw.box is not None and mutation.box_shift:
            yl, yh, xl, xh = draw.box
            draw = replace(draw, box=(yl + mutation.box_shift, yh + mutation.box_shift, xl, xh))
        x, target = self.mixup.apply(x, y, draw)
        self.masks.step = step
        train.reset_calls(self.model)
        lr = self.optimizer.param_groups[0]["lr"]
        loss = train.soft_target_cross_entropy(self.model(x), target)
        loss.backward()
        params = [p for _, p in self.model.named_parameters()]
        norm = None
        if r.clip is not None:
            if mutation.paddle_clip:
                norm = train.clip.paddle_clip_grad_norm_(params, r.clip)
            else:
                norm = train.dispatch_clip_grad(params, r.clip, r.clip_mode)
        self.optimizer.step()
        self.optimizer.clear_grad()
        self.updates += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.updates)
        self.scheduler.step_update(self.updates)
        return self.state(float(loss), lr, norm, draw.box is not None)

    def state(self, loss: float, lr: float, norm: float | None, cutmix: bool) -> StepState:
        def torch_layout(name: str, t: paddle.Tensor) -> np.ndarray:
            a = t.numpy()
            return a.T.copy() if self.names[name] else a

        weights = {k: torch_layout(k, self.params[k]) for k in self.names}
        st = self.optimizer.state
        m = {k: torch_layout(k, st[k]["exp_avg"]) for k in self.names if k in st}
        v = {k: torch_layout(k, st[k]["exp_avg_sq"]) for k in self.names if k in st}
        ema = {}
        if self.ema is not None:
            own = self.ema.state_dict()
            ema = {k: torch_layout(k, own[k]) for k in self.names}
        return StepState(loss, lr, norm, cutmix, weights, m, v, ema)


# --- resuming from a torch training checkpoint -------------------------------------------


def save_torch_training_checkpoint(side: TimmSide, path: Path, epoch: int = 0) -> Path:
    """``torch.save`` of what the official training code checkpoints, from timm's side."""
    torch.save(
        {
            "model": side.model.state_dict(),
            "optimizer": side.optimizer.state_dict(),
            "lr_scheduler": side.scheduler.state_dict(),
            "epoch": epoch,
            "model_ema": side.ema.module.state_dict() if side.ema is not None else None,
        },
        path,
    )
    return path


def _read_exact(path: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in read_weights(path).items()}


def resume_paddle_side(setup: Setup, checkpoint: Path, folder: Path) -> PaddleSide:
    """A Paddle side continuing timm's run saved in ``checkpoint``: weights and EMA through the
    converter, optimizer and schedule through :func:`converter.train_state.read_training_state`
    (no pickle code runs), every tensor kept in its dtype."""
    weights, ema_weights = folder / "resumed.pdparams", folder / "resumed_ema.pdparams"
    convert_checkpoint(checkpoint, weights, setup.variant)
    side = PaddleSide(setup, weights)
    state = _read_exact(weights)
    with paddle.no_grad():
        for name, p in side.model.named_parameters():
            p.set_value(state[name].astype(setup.dtype))
        if side.ema is not None:
            convert_checkpoint(checkpoint, ema_weights, setup.variant, ema=True)
            ema = _read_exact(ema_weights)
            for key, index in side.ema.keys:
                side.ema.tensors[index].set_value(ema[key].astype(setup.dtype))
    training = read_training_state(checkpoint)
    side.optimizer.load_state_dict(training.optimizer)
    side.scheduler.load_state_dict(training.scheduler)
    side.updates = max(s["step"] for s in training.optimizer["state"].values())
    return side


# --- the run -------------------------------------------------------------------------------


def prepare_weights(setup: Setup, folder: Path) -> tuple[Path, Path]:
    """The seeded official checkpoint and its conversion by this project's converter."""
    src = write_official_checkpoint(setup.variant, folder / f"{setup.variant}.pth", seed=setup.seed)
    dst = folder / f"{setup.variant}.pdparams"
    convert_checkpoint(src, dst, setup.variant)
    return src, dst


def run(
    setup: Setup,
    sides: Sequence[Mutation] = (Mutation(),),
    reference: str = "timm",
    on_step: Callable[[int, list[StepReport]], None] | None = None,
    stop_at_failure: bool = False,
) -> list[list[StepReport]]:
    """Train the reference (timm's, or with ``reference="paddle"`` an unmutated Paddle side, for
    the control) and one Paddle side per mutation in lock step; per side, one report per step
    (with ``stop_at_failure``, a side that fails the gates stops there: its reports end with it)."""
    paddle.seed(setup.seed)
    torch.manual_seed(setup.seed)
    with tempfile.TemporaryDirectory(prefix="train_parity_") as tmp:
        src, dst = prepare_weights(setup, Path(tmp))
        ref = TimmSide(setup, src) if reference == "timm" else PaddleSide(setup, dst)
        candidates = [PaddleSide(setup, dst, m) for m in sides]
    reports: list[list[StepReport]] = [[] for _ in candidates]
    for step in range(1, setup.steps + 1):
        expected = ref.step(step)
        now = []
        for side, out in zip(candidates, reports):
            if stop_at_failure and out and not out[-1].ok:
                continue
            out.append(compare_step(step, expected, side.step(step), setup.dtype))
            now.append(out[-1])
        if on_step is not None:
            on_step(step, now)
    return reports


def first_failure(reports: Sequence[StepReport]) -> int | None:
    """The first step above the gates, or None."""
    return next((r.step for r in reports if not r.ok), None)


def write_plot(reports: Sequence[StepReport], path: Path, title: str) -> None:
    """A PNG: the two loss curves, and the weight difference per step on a log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CoatError("--plot needs matplotlib: pip install matplotlib") from None
    steps = [r.step for r in reports]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(steps, [r.loss[0] for r in reports], label="timm", marker="o")
    a.plot(steps, [r.loss[1] for r in reports], label="Paddle", linestyle="--", marker="x")
    a.set(xlabel="step", ylabel="loss", title="training loss")
    a.legend()
    for key, label in (("weights_rel", "weights"), ("exp_avg_rel", "AdamW m"), ("ema_rel", "EMA")):
        b.semilogy(steps, [max(getattr(r, key), 1e-300) for r in reports], label=label, marker=".")
    b.set(xlabel="step", ylabel="max |d| / max |timm|", title="relative difference")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reference.train_parity", description=__doc__.split("\n")[0])
    p.add_argument("variant", choices=sorted(VARIANTS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--dtype", choices=sorted(GATES), default="float64")
    p.add_argument("--size", type=int, default=32, help="input size in pixels, a multiple of 32 (default 32)")
    p.add_argument("--batch", type=int, default=4, help="batch size, even (Mixup flips the batch; default 4)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="official")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, help="write a PNG of the loss curves and the differences")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.steps < 1 or args.size < 32 or args.size % 32 or args.batch < 2 or args.batch % 2:
        p.error("--steps >= 1, --size a multiple of 32, --batch even and >= 2")
    return args


@command
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reference.train_parity``: run, print per step, exit 1 above the gates."""
    args = parse_args(argv)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CoatError("--plot needs matplotlib: pip install matplotlib") from None
    setup = Setup(
        args.variant, args.steps, args.dtype, args.size, args.batch, RECIPES[args.recipe], args.seed
    )
    loss_gate, gate = GATES[args.dtype]
    if not args.json:
        print(
            f"{args.variant} {args.dtype} {args.size}px batch {args.batch}, "
            f"recipe {args.recipe}, {args.steps} steps; "
            f"timm {timm.__version__} / torch {torch.__version__} vs paddle {paddle.__version__}; "
            f"gates: loss {loss_gate:.0e}, weights {gate:.0e}"
        )

    def show(step: int, now: list[StepReport]) -> None:
        if not args.json:
            print(now[0].line(), flush=True)

    (reports,) = run(setup, on_step=show)
    failed = first_failure(reports)
    if args.plot is not None:
        write_plot(reports, args.plot, f"{args.variant} {args.dtype}, timm vs Paddle")
    if args.json:
        out = {
            "setup": {**asdict(setup), "recipe": asdict(setup.recipe)},
            "steps": [asdict(r) for r in reports],
        }
        print(json.dumps({**out, "ok": failed is None, "first_failure": failed}))
    else:
        worst = max(r.weights_rel for r in reports)
        model = max(r.model_weights_rel for r in reports)
        print(
            f"largest weight difference {worst:.2e} per tensor, {model:.2e} at the model's scale; "
            + ("ok" if failed is None else f"FAIL from step {failed}")
        )
    return 0 if failed is None else 1


if __name__ == "__main__":
    sys.exit(main())
