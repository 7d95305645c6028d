"""timm's CoaT with the official code's between-scale resampling.

timm resamples in the parallel blocks by a fixed factor (x2, x4, x0.5, x0.25), which only
lines up when every scale halves exactly, i.e. at inputs that are multiples of 32. The
official code resizes each scale to the *target* scale's size, so it runs at any input size
(230x230, 240x320, ...). :func:`resample_to_target_size` gives a timm model that behaviour;
at multiples of 32 both give the same numbers.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from timm.models.coat import ParallelBlock


def _resize_tokens(x: torch.Tensor, size, target) -> torch.Tensor:
    """[B, 1 + H*W, C] -> [B, 1 + H'*W', C]: bilinear resize of the image tokens, CLS kept."""
    B, _, C = x.shape
    img = x[:, 1:].transpose(1, 2).reshape(B, C, *size)
    img = F.interpolate(img, size=tuple(target), mode="bilinear", align_corners=False)
    return torch.cat((x[:, :1], img.flatten(2).transpose(1, 2)), dim=1)


def _forward_by_target_size(self, x1, x2, x3, x4, sizes):
    _, s2, s3, s4 = sizes
    cur2 = self.factoratt_crpe2(self.norm12(x2), size=s2)
    cur3 = self.factoratt_crpe3(self.norm13(x3), size=s3)
    cur4 = self.factoratt_crpe4(self.norm14(x4), size=s4)
    cur2, cur3, cur4 = (
        cur2 + _resize_tokens(cur3, s3, s2) + _resize_tokens(cur4, s4, s2),
        cur3 + _resize_tokens(cur4, s4, s3) + _resize_tokens(cur2, s2, s3),
        cur4 + _resize_tokens(cur3, s3, s4) + _resize_tokens(cur2, s2, s4),
    )
    x2 = x2 + self.drop_path(cur2)
    x3 = x3 + self.drop_path(cur3)
    x4 = x4 + self.drop_path(cur4)
    x2 = x2 + self.drop_path(self.mlp2(self.norm22(x2)))
    x3 = x3 + self.drop_path(self.mlp3(self.norm23(x3)))
    x4 = x4 + self.drop_path(self.mlp4(self.norm24(x4)))
    return x1, x2, x3, x4


def resample_to_target_size(model: torch.nn.Module) -> torch.nn.Module:
    """Make every parallel block of ``model`` resample to the target size; returns ``model``."""
    for module in model.modules():
        if isinstance(module, ParallelBlock):
            module.forward = types.MethodType(_forward_by_target_size, module)
    return model
