"""Mixup and CutMix with timm's ``Mixup`` semantics, in 'batch' mode, draws separable.

timm's ``Mixup(x, target)`` draws from numpy's global RNG, in this order: ``rand() < prob``;
with both alphas ``rand() < switch_prob`` picks CutMix; ``beta(alpha, alpha)`` the lambda; for
CutMix ``randint(0, H)`` then ``randint(0, W)`` the box centre, the box of side ``sqrt(1 - lam)``
clipped to the image, and (``correct_lam``) lambda recomputed from the clipped area. The images
are mixed with the batch flipped (``x * lam + flip(x) * (1 - lam)``, or the box pasted from the
flipped batch) and the targets are ``one_hot`` smoothed (``off = s / C``, ``on = 1 - s + off``)
mixed the same way. :meth:`Mixup.draw` makes those draws from a ``numpy.random.RandomState``
the caller passes, so the same seed gives timm's draws; :meth:`Mixup.apply` takes draws from
anywhere (a test, another framework's run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle
import paddle.nn.functional as F


@dataclass(frozen=True)
class MixParams:
    """One batch's draw: lambda, and the CutMix box (rows yl:yh, columns xl:xh) or None."""

    lam: float
    box: tuple[int, int, int, int] | None = None


class Mixup:
    """timm's ``Mixup(mode='batch')``: see the module docstring."""

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
    ) -> None:
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.correct_lam = correct_lam
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes

    def draw(self, rng: np.random.RandomState, shape: tuple[int, ...]) -> MixParams:
        """One batch's lambda and box for images of ``shape`` (…, H, W), drawn as timm does."""
        if not rng.rand() < self.prob:
            return MixParams(1.0)
        use_cutmix = False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.rand() < self.switch_prob
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        elif self.mixup_alpha > 0:
            alpha = self.mixup_alpha
        else:
            use_cutmix, alpha = True, self.cutmix_alpha
        lam = float(rng.beta(alpha, alpha))
        if not use_cutmix:
            return MixParams(lam)
        h, w = shape[-2:]
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy, cx = rng.randint(0, h), rng.randint(0, w)
        yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
        xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
        if self.correct_lam:
            lam = 1.0 - float((yh - yl) * (xh - xl)) / float(h * w)
        return MixParams(lam, (int(yl), int(yh), int(xl), int(xh)))

    def apply(
        self, x: paddle.Tensor, target: paddle.Tensor, params: MixParams
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Mixed images [B, C, H, W] and soft targets [B, num_classes] (in ``x``'s dtype)."""
        if x.shape[0] % 2:
            raise ValueError(f"Mixup needs an even batch, got {x.shape[0]}")
        lam = params.lam
        if lam != 1.0:
            flipped = x.flip(0)
            if params.box is not None:
                yl, yh, xl, xh = params.box
                x = x.clone()
                x[:, :, yl:yh, xl:xh] = flipped[:, :, yl:yh, xl:xh]
            else:
                x = x * lam + flipped * (1.0 - lam)
        return x, self.targets(target, lam, x.dtype)

    def targets(self, target: paddle.Tensor, lam: float, dtype=paddle.float32) -> paddle.Tensor:
        """Smoothed one-hot targets mixed with their flip by ``lam``."""
        off = self.label_smoothing / self.num_classes
        on = 1.0 - self.label_smoothing + off
        hot = F.one_hot(target.reshape([-1]).astype("int64"), self.num_classes).astype(dtype)
        y1 = hot * on + (1.0 - hot) * off  # exactly on / off, as timm's scatter into a full tensor
        return y1 * lam + y1.flip(0) * (1.0 - lam)

    def __call__(self, x: paddle.Tensor, target: paddle.Tensor, rng: np.random.RandomState):
        return self.apply(x, target, self.draw(rng, tuple(x.shape)))
