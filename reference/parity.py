"""The parity harness: timm's model and the Paddle model on identical inputs, compared everywhere.

Both sides run the same batch with hooks on every block (patch embeddings, serial blocks,
parallel blocks) and on the classifier's input. The report compares, per tensor, max |delta|,
max |delta| / max |reference|, cosine similarity and (logits) top-1 agreement for: each
scale's output x1..x4 (after the parallel blocks for CoaT), the backbone feature maps of
``return_interm_layers=True``, the CLS-token features the classifier sees, and the logits. It
names the first block, in execution order, whose outputs differ beyond tolerance, which is
where a port goes wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from converter.layout import FEATURE_NAMES, num_classes_in
from converter.variants import CoatVariant, get_variant

DEFAULT_RTOL = 1e-5  # max |delta| / max |reference| allowed, fp32


@dataclass
class Comparison:
    """How far one candidate tensor is from its reference."""

    name: str
    max_abs: float
    max_rel: float  # max |delta| / max |reference|
    cosine: float
    top1_agree: float | None  # fraction of rows whose argmax agrees (logits only)
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_rel)) and self.max_rel <= self.tolerance

    def line(self) -> str:
        top1 = "" if self.top1_agree is None else f", top-1 agreement {self.top1_agree:.0%}"
        return (
            f"{self.name}: max|d| {self.max_abs:.3e}, max|d|/max|ref| {self.max_rel:.3e} "
            f"(tolerance {self.tolerance:.0e}), cosine {self.cosine:.9f}{top1}: "
            f"{'ok' if self.ok else 'FAIL'}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: float = DEFAULT_RTOL,
    top1: bool = False,
) -> Comparison:
    """Compare ``candidate`` against ``reference`` (same shape)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        return Comparison(name, float("inf"), float("inf"), float("nan"), None, tolerance)
    delta = np.abs(ref - cand)
    max_abs = float(delta.max()) if delta.size else 0.0
    ref_max = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else float("inf"))
    if np.isnan(cand).any() or np.isnan(ref).any():
        max_rel = float("nan")
    norms = np.linalg.norm(ref) * np.linalg.norm(cand)
    cosine = float((ref * cand).sum() / norms) if norms > 0 else float(max_abs == 0)
    agree = None
    if top1:
        agree = float(np.mean(ref.reshape(len(ref), -1).argmax(1) == cand.reshape(len(cand), -1).argmax(1)))
    return Comparison(name, max_abs, max_rel, cosine, agree, tolerance)


@dataclass
class ParityReport:
    """Every comparison of one run, and where the two models first part."""

    variant: str
    input_size: tuple[int, int]
    batch: int
    tolerance: float
    outputs: list[Comparison]  # x1..x4, backbone features, CLS features, logits
    blocks: list[Comparison] = field(default_factory=list)  # every hooked block, in call order

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.outputs + self.blocks)

    @property
    def first_divergence(self) -> str | None:
        for c in self.blocks + self.outputs:
            if not c.ok:
                return c.name
        return None

    @property
    def logits(self) -> Comparison:
        return next(c for c in self.outputs if c.name == "logits")

    def table(self) -> str:
        h, w = self.input_size
        rows = [
            f"{self.variant} at {h}x{w}, batch {self.batch}:",
            f"  {'tensor':14} {'max|d|':>10} {'max|d|/max|ref|':>16} {'cosine':>12} {'top-1':>6}  verdict",
        ]
        for c in self.outputs:
            top1 = "" if c.top1_agree is None else f"{c.top1_agree:.0%}"
            rows.append(
                f"  {c.name:14} {c.max_abs:>10.3e} {c.max_rel:>16.3e} {c.cosine:>12.9f} "
                f"{top1:>6}  {'ok' if c.ok else 'FAIL'}"
            )
        worst = max(self.blocks, key=lambda c: c.max_rel, default=None)
        if worst is not None:
            rows.append(f"  {len(self.blocks)} blocks traced, worst {worst.name} at {worst.max_rel:.3e}")
        first = self.first_divergence
        rows.append(
            f"  parity {'ok' if first is None else 'FAILED: first divergence at ' + first}"
            f" (tolerance {self.tolerance:.0e})"
        )
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "input_size": list(self.input_size),
            "batch": self.batch,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "first_divergence": self.first_divergence,
            "outputs": [c.to_dict() for c in self.outputs],
            "blocks": [c.to_dict() for c in self.blocks],
        }


def seeded_input(batch: int, size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """A deterministic NCHW float32 batch, roughly the scale of normalised images."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)


# --- running each side with hooks --------------------------------------------------------


def _is_traced(name: str) -> bool:
    """Blocks whose outputs are recorded: each patch embedding, serial and parallel block."""
    parts = name.split(".")
    return (len(parts) == 1 and name.startswith("patch_embed")) or (
        len(parts) == 2 and (name.startswith("serial_blocks") or name == f"parallel_blocks.{parts[-1]}")
    )


def _record(trace: list, name: str, output, to_numpy: Callable) -> None:
    if name.startswith("parallel_blocks"):
        for i, x in enumerate(output[1:], start=2):  # x1 only passes through
            trace.append((f"{name}/x{i}", to_numpy(x)))
    else:
        trace.append((name, to_numpy(output[0] if isinstance(output, tuple) else output)))


def _run_traced(
    layers, head, post_hook: str, to_numpy: Callable, forward: Callable
) -> tuple[np.ndarray, np.ndarray, list]:
    """(logits, classifier input, [(block, output)]) of ``forward()``, with a forward hook
    (``post_hook``: the framework's name for it) on each traced block of ``layers`` (``(name,
    layer)`` pairs) and a pre-hook on ``head``; the hooks are removed whatever happens."""
    trace, head_input, handles = [], [], []
    for name, layer in layers:
        if _is_traced(name):
            record = lambda m, i, o, name=name: _record(trace, name, o, to_numpy)  # noqa: E731
            handles.append(getattr(layer, post_hook)(record))
    handles.append(head.register_forward_pre_hook(lambda m, i: head_input.append(to_numpy(i[0]))))
    try:
        logits = to_numpy(forward())
    finally:
        for h in handles:
            h.remove()
    return logits, head_input[0], trace


def run_torch(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """(logits, classifier input, [(block, output)]) of a timm CoaT in eval mode."""
    import torch

    def forward():
        with torch.no_grad():
            return model.eval()(torch.from_numpy(x))

    to_numpy = lambda t: t.detach().numpy().copy()  # noqa: E731
    return _run_traced(model.named_modules(), model.head, "register_forward_hook", to_numpy, forward)


def run_paddle(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """(logits, classifier input, [(block, output)]) of a Paddle CoaT in eval mode."""
    import paddle

    def forward():
        model.eval()
        with paddle.no_grad():
            return model(paddle.to_tensor(x))

    to_numpy = lambda t: t.numpy().copy()  # noqa: E731
    return _run_traced(model.named_sublayers(), model.head, "register_forward_post_hook", to_numpy, forward)


def _stage_outputs(trace: list) -> dict[str, np.ndarray]:
    """x1..x4: the last recorded output of each scale (parallel blocks override serial ones)."""
    stages = {}
    for name, value in trace:
        if name.startswith("serial_blocks"):
            stages[f"x{name[len('serial_blocks')]}"] = value
        elif name.startswith("parallel_blocks"):
            stages[name.split("/")[1]] = value
    return dict(sorted(stages.items()))


def compare_models(
    reference,
    candidate,
    x: np.ndarray,
    variant: str,
    reference_backbone=None,
    candidate_backbone=None,
    tolerance: float = DEFAULT_RTOL,
) -> ParityReport:
    """Run both classifiers (and backbones, if given) on ``x`` and compare everything."""
    ref_logits, ref_head, ref_trace = run_torch(reference, x)
    cand_logits, cand_head, cand_trace = run_paddle(candidate, x)
    blocks = [
        compare(rn, rv, cv, tolerance)
        if rn == cn
        else Comparison(f"{rn} vs {cn}", float("inf"), float("inf"), float("nan"), None, tolerance)
        for (rn, rv), (cn, cv) in zip(ref_trace, cand_trace)
    ]
    if len(ref_trace) != len(cand_trace):
        blocks.append(
            Comparison(
                f"block count {len(ref_trace)} vs {len(cand_trace)}",
                float("inf"),
                float("inf"),
                float("nan"),
                None,
                tolerance,
            )
        )
    ref_stages, cand_stages = _stage_outputs(ref_trace), _stage_outputs(cand_trace)
    outputs = [compare(k, ref_stages[k], cand_stages.get(k, np.empty(0)), tolerance) for k in ref_stages]
    if reference_backbone is not None and candidate_backbone is not None:
        import paddle
        import torch

        with torch.no_grad():
            ref_maps = reference_backbone.eval()(torch.from_numpy(x))
        candidate_backbone.eval()
        with paddle.no_grad():
            cand_maps = candidate_backbone(paddle.to_tensor(x))
        outputs += [compare(k, ref_maps[k].numpy(), cand_maps[k].numpy(), tolerance) for k in FEATURE_NAMES]
    outputs.append(compare("cls_features", ref_head, cand_head, tolerance))
    outputs.append(compare("logits", ref_logits, cand_logits, tolerance, top1=True))
    return ParityReport(variant, tuple(x.shape[2:]), len(x), tolerance, outputs, blocks)


# --- from files ----------------------------------------------------------------------------


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def reference_models(src: str | Path, variant: CoatVariant, size: tuple[int, int], ema: bool = False):
    """timm's classifier and backbone with the weights of ``src``, built for ``size``.

    Sizes that are not multiples of 32 need the official target-size resampling.
    """
    from converter.readers import read_checkpoint

    from .official import resample_to_target_size
    from .timm_model import build_timm, load_timm_state

    state = read_checkpoint(src, ema=ema).arrays()
    official = any(s % 32 for s in size)
    models = []
    for kwargs in (
        {"num_classes": num_classes_in(state, torch_layout=True)},
        {"return_interm_layers": True, "out_features": list(FEATURE_NAMES)},
    ):
        model = build_timm(variant, img_size=size, **kwargs)
        load_timm_state(model, state)
        models.append(resample_to_target_size(model) if official else model)
    return models


def candidate_models(dst: str | Path, variant: CoatVariant, num_classes: int):
    """The Paddle classifier and backbone with the weights of ``dst``."""
    from paddle_model.factory import create_model

    return (
        create_model(variant.name, pretrained=dst, num_classes=num_classes),
        create_model(variant.name, pretrained=dst, return_interm_layers=True),
    )


def verify_conversion(
    src: str | Path,
    dst: str | Path,
    variant: str | CoatVariant,
    size: int | tuple[int, int] | None = None,
    batch: int = 2,
    seed: int = 0,
    tolerance: float = DEFAULT_RTOL,
    ema: bool = False,
) -> ParityReport:
    """Full parity of timm's model with ``src`` against the Paddle model with ``dst``.

    Runs both on the same seeded batch, at the variant's default input size unless given.
    """
    v = get_variant(variant) if isinstance(variant, str) else variant
    size = _size_pair(size or v.img_size)
    reference, reference_backbone = reference_models(src, v, size, ema=ema)
    candidate, candidate_backbone = candidate_models(dst, v, reference.num_classes)
    x = seeded_input(batch, size, seed)
    return compare_models(reference, candidate, x, v.name, reference_backbone, candidate_backbone, tolerance)
