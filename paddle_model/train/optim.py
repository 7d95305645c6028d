"""AdamW over parameter groups chosen by structured names, with torch's update.

timm builds the official recipe's optimizer as ``torch.optim.AdamW(param_groups_weight_decay(
model, 0.05, model.no_weight_decay()))``: no weight decay for 1-D parameters, biases and the
names the model lists (CoaT: ``cls_token1..4``). This module does the same by the names of
``named_parameters()``, never by Paddle's internal ``param.name`` (``linear_3.b_0``), which is
what ``paddle.optimizer.AdamW(apply_decay_param_fun=...)`` receives.

The update is written here rather than taken from ``paddle.optimizer.AdamW`` because Paddle's
differs from torch's: a group's ``learning_rate`` is a multiplier of the optimizer's (torch's is
absolute), per-parameter lr scaling (``lr_ratio``, needed for layer-wise decay) is not
implemented on CPU, the update folds the bias corrections into the step size and scales eps by
``sqrt(1 - beta2^t)``, the beta powers are accumulated by repeated products, and its state is
keyed by ``param.name``, so a torch checkpoint's moments have nowhere stable to go.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Iterable, Mapping

import numpy as np
import paddle

from converter.train_state import NO_WEIGHT_DECAY, excluded_from_decay


def no_weight_decay(model: paddle.nn.Layer) -> set[str]:
    """The names the model excludes from weight decay (timm's ``model.no_weight_decay()``)."""
    own = getattr(model, "no_weight_decay", None)
    return set(own()) if callable(own) else set(NO_WEIGHT_DECAY)


def _matches(name: str, patterns: Collection[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def is_decayed(name: str, param: paddle.Tensor, no_decay: Collection[str], exclude_1d: bool = True) -> bool:
    """timm's rule: 1-D parameters, ``*.bias`` and names matching ``no_decay`` are not decayed."""
    if exclude_1d:
        return not excluded_from_decay(name, tuple(param.shape), no_decay)
    return not _matches(name, no_decay)


def param_groups_weight_decay(
    model: paddle.nn.Layer,
    weight_decay: float = 1e-5,
    no_weight_decay_list: Collection[str] | None = None,
    exclude_1d: bool = True,
) -> list[dict]:
    """timm's ``param_groups_weight_decay``: [no-decay group, decay group], each a dict with
    ``names``, ``params`` and ``weight_decay``, in ``named_parameters()`` order (shared tensors
    once). ``no_weight_decay_list`` defaults to :func:`no_weight_decay` of the model."""
    skip = no_weight_decay(model) if no_weight_decay_list is None else set(no_weight_decay_list)
    decay: list[tuple[str, paddle.Tensor]] = []
    no_decay: list[tuple[str, paddle.Tensor]] = []
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        if weight_decay and is_decayed(name, param, skip, exclude_1d):
            decay.append((name, param))
        else:
            no_decay.append((name, param))
    groups = []
    for members, wd in ((no_decay, 0.0), (decay, weight_decay)):
        if members:
            groups.append(
                {"names": [n for n, _ in members], "params": [p for _, p in members], "weight_decay": wd}
            )
    return groups


def decayed_parameters(
    model: paddle.nn.Layer, no_weight_decay_list: Collection[str] | None = None
) -> list[str]:
    """Names of the parameters the recipe decays (for the tests and the logs)."""
    groups = param_groups_weight_decay(model, 1.0, no_weight_decay_list)
    return [n for g in groups if g["weight_decay"] for n in g["names"]]


class AdamW:
    """torch's ``AdamW`` (decoupled weight decay, ``amsgrad=False``) over named parameter groups.

    Per step and parameter, as ``torch.optim.AdamW``'s single-tensor path does it:
    ``p *= 1 - lr * wd``; ``m = lerp(m, g, 1 - b1)``; ``v = v * b2 + (1 - b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    Each group's ``lr`` is absolute, as in torch; a scheduler sets it (times the group's
    ``lr_scale`` if it has one). ``state[name]`` holds ``step`` (int), ``exp_avg``, ``exp_avg_sq``.
    """

    def __init__(
        self,
        groups: list[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.param_groups = [{**self.defaults, **g} for g in groups]
        for g in self.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.state: dict[str, dict] = {}

    def named_params(self) -> Iterable[tuple[str, paddle.Tensor, dict]]:
        for g in self.param_groups:
            for name, p in zip(g["names"], g["params"]):
                yield name, p, g

    @paddle.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for name, p, g in self.named_params():
            grad = p.grad
            if grad is None:
                continue
            beta1, beta2 = g["betas"]
            lr, wd, eps = g["lr"], g["weight_decay"], g["eps"]
            st = self.state.get(name)
            if st is None:
                st = self.state[name] = {
                    "step": 0,
                    "exp_avg": paddle.zeros_like(p),
                    "exp_avg_sq": paddle.zeros_like(p),
                }
            st["step"] += 1
            t = st["step"]
            value = p
            if wd != 0:
                value = value * (1 - lr * wd)
            m = st["exp_avg"] + (1 - beta1) * (grad - st["exp_avg"])  # torch's lerp_ for weight < 0.5
            v = st["exp_avg_sq"] * beta2 + grad * grad * (1 - beta2)
            step_size = lr / (1 - beta1**t)
            denom = v.sqrt() / math.sqrt(1 - beta2**t) + eps
            value = value - step_size * (m / denom)
            st["exp_avg"], st["exp_avg_sq"] = m, v
            p.set_value(value)

    def clear_grad(self) -> None:
        for _, p, _ in self.named_params():
            p.clear_gradient(set_to_zero=False)

    def state_dict(self) -> dict:
        """``{"state": {name: {"step", "exp_avg", "exp_avg_sq" (numpy)}}, "param_groups": [...]}``,
        groups without their tensors (their ``names`` kept)."""
        state = {
            n: {"step": s["step"], "exp_avg": s["exp_avg"].numpy(), "exp_avg_sq": s["exp_avg_sq"].numpy()}
            for n, s in self.state.items()
        }
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state: Mapping) -> None:
        """Take the moments and steps of ``state`` (as :meth:`state_dict` gives), by name; the
        groups' hyper-parameters too. Every name and shape must fit this optimizer's."""
        params = {n: p for n, p, _ in self.named_params()}
        unknown = sorted(set(state["state"]) - set(params))
        if unknown:
            raise KeyError(f"optimizer state for unknown parameters {unknown[:5]}")
        for name, s in state["state"].items():
            p = params[name]
            for key in ("exp_avg", "exp_avg_sq"):
                if tuple(np.shape(s[key])) != tuple(p.shape):
                    raise ValueError(
                        f"optimizer state {name}.{key}: shape {np.shape(s[key])}, parameter {p.shape}"
                    )
            self.state[name] = {
                "step": int(s["step"]),
                "exp_avg": paddle.to_tensor(np.asarray(s["exp_avg"]), dtype=p.dtype),
                "exp_avg_sq": paddle.to_tensor(np.asarray(s["exp_avg_sq"]), dtype=p.dtype),
            }
        for g, saved in zip(self.param_groups, state.get("param_groups", [])):
            for key in ("lr", "initial_lr", "betas", "eps", "weight_decay", "lr_scale"):
                if key in saved:
                    g[key] = tuple(saved[key]) if key == "betas" else saved[key]
