"""The recipe's losses, as timm's ``LabelSmoothingCrossEntropy`` and ``SoftTargetCrossEntropy``."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F


def label_smoothing_cross_entropy(
    logits: paddle.Tensor, target: paddle.Tensor, smoothing: float = 0.1
) -> paddle.Tensor:
    """Mean over the batch of ``(1 - s) * nll(target) + s * mean(-log_softmax)`` (timm's
    ``LabelSmoothingCrossEntropy``: the smoothing mass spread over all classes by the mean)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    logprobs = F.log_softmax(logits, axis=-1)
    nll = -paddle.take_along_axis(logprobs, target.reshape([-1, 1]).astype("int64"), axis=-1).squeeze(1)
    smooth = -logprobs.mean(axis=-1)
    return ((1.0 - smoothing) * nll + smoothing * smooth).mean()


def soft_target_cross_entropy(logits: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Mean over the batch of ``sum(-target * log_softmax(logits))`` (timm's
    ``SoftTargetCrossEntropy``, the loss of Mixup/CutMix targets)."""
    return paddle.sum(-target * F.log_softmax(logits, axis=-1), axis=-1).mean()
