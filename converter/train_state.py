"""A torch training checkpoint's optimizer and schedule, read without torch and without pickle code.

The official CoaT code (DeiT's ``main.py`` with timm's optimizer factory) saves ``{"model",
"optimizer", "lr_scheduler", "epoch", "model_ema"?, "scaler"?, "args"?}``. The model and EMA
weights convert as any checkpoint (:func:`converter.readers.read_checkpoint`, ``ema=True``);
this module turns the rest into what ``paddle_model.train`` takes: torch's ``AdamW`` state is
keyed by position (``state[i]``, ``param_groups[g]["params"] = [i, ...]``), and positions are
given to parameters in the order of timm's ``param_groups_weight_decay`` (the no-decay group,
then the decay group, each in ``named_parameters()`` order); this module names them so,
checks every shape against its parameter, and puts Linear weights' moments into Paddle's
(transposed) layout.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .detect import detect_variant
from .errors import ConversionError, preview
from .files import check_input_file
from .layout import coat_layout
from .lazy import Lazy, materialize
from .torch_pickle import load_any_torch_file

NO_WEIGHT_DECAY = ("cls_token1", "cls_token2", "cls_token3", "cls_token4")  # CoaT's no_weight_decay()


def excluded_from_decay(
    name: str, shape: tuple[int, ...], no_decay: Collection[str] = NO_WEIGHT_DECAY
) -> bool:
    """timm's rule: 1-D (or 0-D) tensors, ``*.bias`` and names matching ``no_decay`` are not decayed."""
    return len(shape) <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, p) for p in no_decay)


@dataclass
class TrainingState:
    """What a torch training checkpoint holds besides the weights, in this project's terms."""

    variant: str
    optimizer: dict  # paddle_model.train.AdamW.state_dict() format, moments in Paddle's layout
    scheduler: dict  # timm's CosineLRScheduler.state_dict() (plain numbers and lists)
    epoch: int | None
    scaler: dict | None = None
    notes: list[str] = field(default_factory=list)


def _number(value: Any, what: str) -> float:
    if isinstance(value, Lazy):
        array = materialize(value)
        if array.size != 1:
            raise ConversionError(f"{what} is a tensor of shape {array.shape}, expected one number")
        return float(array.reshape(()))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConversionError(f"{what} is a {type(value).__name__}, expected a number")
    return float(value)


def _plain(value: Any, what: str) -> Any:
    """Numbers, strings, None, and lists/tuples/dicts of them; tensors of one element as numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Lazy):
        return _number(value, what)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, what) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{what}.{k}") for k, v in value.items()}
    raise ConversionError(f"{what} holds a {type(value).__name__}, expected plain numbers")


def _parameter_names(model: Mapping[str, Any]) -> list[str]:
    """The model's parameters in ``named_parameters()`` order: each shared tensor once."""
    names, seen = [], []
    for name, tensor in model.items():
        if any(isinstance(tensor, Lazy) and tensor.same_as(other) for other in seen):
            continue
        seen.append(tensor)
        names.append(name)
    return names


def read_training_state(path: str | Path, no_decay: Collection[str] = NO_WEIGHT_DECAY) -> TrainingState:
    """The optimizer, schedule, epoch and scaler of the torch training checkpoint at ``path``."""
    path = Path(path)
    check_input_file(path, ConversionError, "the training checkpoint")
    obj = load_any_torch_file(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) or "optimizer" not in obj:
        keys = preview(str(k) for k in obj) if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(
            f"{path}: not a training checkpoint: expected 'model' and 'optimizer' entries, found {keys}"
        )
    model = obj["model"]
    shapes = {k: tuple(v.shape) for k, v in model.items() if isinstance(v, Lazy)}
    variant = detect_variant(shapes, str(path), path.name).variant
    layout = coat_layout(variant)
    names = [n for n in _parameter_names(model) if n in layout.tensors]
    opt = obj["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not opt.get("param_groups"):
        raise ConversionError(
            f"{path}: 'optimizer' is not a torch optimizer state dict (state, param_groups)"
        )
    groups_in = opt["param_groups"]
    no_decay_names = [n for n in names if excluded_from_decay(n, shapes[n], no_decay)]
    decay_names = [n for n in names if not excluded_from_decay(n, shapes[n], no_decay)]
    order = {1: [names], 2: [no_decay_names, decay_names]}.get(len(groups_in))
    sizes = [len(g.get("params", [])) for g in groups_in]
    if order is None or sizes != [len(o) for o in order]:
        raise ConversionError(
            f"{path}: the optimizer's groups hold {sizes} parameters, "
            f"timm's param_groups_weight_decay would give {[len(o) for o in order or []]}: "
            "only optimizers built by timm's grouping (or one group) can be named"
        )
    state: dict[str, dict] = {}
    groups_out = []
    for group, group_names in zip(groups_in, order):
        for index, name in zip(group["params"], group_names):
            entry = opt["state"].get(index)
            if entry is None:
                continue  # no update yet
            if "max_exp_avg_sq" in entry:
                raise ConversionError(
                    f"{path}: the optimizer used amsgrad, which paddle_model.train.AdamW has not"
                )
            moments = {}
            for key in ("exp_avg", "exp_avg_sq"):
                value = entry.get(key)
                if not isinstance(value, Lazy) or tuple(value.shape) != shapes[name]:
                    got = getattr(value, "shape", type(value).__name__)
                    raise ConversionError(
                        f"{path}: optimizer state {index}.{key} ({got}) "
                        f"does not fit parameter {name} {shapes[name]}"
                    )
                array = np.asarray(materialize(value))
                moments[key] = array.T.copy() if layout.tensors[name].transposed else array
            state[name] = {
                "step": int(_number(entry.get("step"), f"optimizer state {index}.step")),
                **moments,
            }
        plain = {k: _plain(v, f"param_groups.{k}") for k, v in group.items() if k != "params"}
        groups_out.append({**plain, "names": list(group_names)})
    scheduler = _plain(obj.get("lr_scheduler") or {}, "lr_scheduler")
    epoch = obj.get("epoch")
    scaler = _plain(obj.get("scaler"), "scaler") if obj.get("scaler") is not None else None
    return TrainingState(
        variant.name,
        {"state": state, "param_groups": groups_out},
        scheduler,
        None if epoch is None else int(_number(epoch, "epoch")),
        scaler,
    )
