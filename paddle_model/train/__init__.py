"""The official training recipe's parts, each with the semantics of timm's own component.

One small module per part (as timm splits ``optim``, ``scheduler``, ``loss``, ``data.mixup``,
``utils.model_ema``); a training loop composes them. ``reference.train_parity`` runs them
against timm's, step by step.
"""

from __future__ import annotations

from .amp import autocast, grad_scaler
from .clip import clip_grad_norm_, clip_grad_value_, dispatch_clip_grad, global_grad_norm
from .droppath import InjectableDropPath, SeededMasks, install_drop_path, reset_calls
from .ema import ModelEma
from .loss import label_smoothing_cross_entropy, soft_target_cross_entropy
from .mixup import MixParams, Mixup
from .optim import AdamW, decayed_parameters, no_weight_decay, param_groups_weight_decay
from .scheduler import CosineLRScheduler

__all__ = [
    "AdamW",
    "CosineLRScheduler",
    "InjectableDropPath",
    "MixParams",
    "Mixup",
    "ModelEma",
    "SeededMasks",
    "autocast",
    "clip_grad_norm_",
    "clip_grad_value_",
    "decayed_parameters",
    "dispatch_clip_grad",
    "global_grad_norm",
    "grad_scaler",
    "install_drop_path",
    "label_smoothing_cross_entropy",
    "no_weight_decay",
    "param_groups_weight_decay",
    "reset_calls",
    "soft_target_cross_entropy",
]
