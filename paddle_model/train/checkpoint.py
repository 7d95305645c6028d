"""Training checkpoints: one ``.safetensors`` file, written atomically, read without pickle.

A checkpoint holds every tensor the run needs to continue (``model/<key>``, ``exp_avg/<name>``,
``exp_avg_sq/<name>``, ``ema/<key>``) and, in its metadata under ``coat_train``, a JSON object
with the rest: the settings, epoch and step, the position in the epoch, the optimizer's steps
and group hyper-parameters, the schedule's state. No generator state is needed: every random
draw of a run is a function of its seed and the epoch or step (see :mod:`.data`).

It is written with :func:`converter.writers.write_safetensors` (``atomic_write``: the file is
named only when complete and replaces the previous one in one rename, so a SIGKILL or a full
disk leaves the previous checkpoint whole) and read by :mod:`converter.safetensors_io`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from converter.errors import WeightsError
from converter.safetensors_io import read_file
from converter.writers import write_safetensors

from ..errors import CoatError

FORMAT = "coat-train-checkpoint/1"
KEY = "coat_train"


@dataclass
class Checkpoint:
    """What a checkpoint file holds, as numpy arrays and plain data."""

    model: dict[str, np.ndarray]
    exp_avg: dict[str, np.ndarray]
    exp_avg_sq: dict[str, np.ndarray]
    ema: dict[str, np.ndarray]
    state: dict  # JSON: settings, epoch, step, batch, optimizer steps/groups, scheduler, history


def save(path: Path, model, optimizer, scheduler, ema, state: dict) -> None:
    """Write the run's state to ``path`` atomically, replacing the previous checkpoint there."""
    tensors: dict[str, np.ndarray] = {}
    for key, value in model.state_dict().items():
        tensors[f"model/{key}"] = value.numpy()
    opt = optimizer.state_dict()
    steps = {}
    for name, s in opt["state"].items():
        tensors[f"exp_avg/{name}"] = s["exp_avg"]
        tensors[f"exp_avg_sq/{name}"] = s["exp_avg_sq"]
        steps[name] = s["step"]
    if ema is not None:
        for key, value in ema.state_dict().items():
            tensors[f"ema/{key}"] = value.numpy()
    meta = {
        "format": FORMAT,
        **state,
        "optimizer": {"steps": steps, "groups": opt["param_groups"]},  # with their names, checked on restore
        "scheduler": scheduler.state_dict(),
    }
    write_safetensors(tensors, Path(path), {}, {KEY: json.dumps(meta)}, force=True)


def load(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; :class:`CoatError` if it is not one."""
    try:
        tensors, metadata = read_file(path)
    except WeightsError as e:
        raise CoatError(f"{e}; it is not a coat-train checkpoint, start again without --resume") from None
    try:
        state = json.loads(metadata[KEY])
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(FORMAT)
    except (KeyError, ValueError, TypeError, RecursionError):
        raise CoatError(f"{path}: not a coat-train checkpoint (no {KEY} metadata of {FORMAT})") from None
    problem = _check_state(state)
    if problem:
        raise CoatError(
            f"{path}: a damaged coat-train checkpoint ({problem}); start the run again without --resume"
        )
    parts: dict[str, dict[str, np.ndarray]] = {"model": {}, "exp_avg": {}, "exp_avg_sq": {}, "ema": {}}
    for name, value in tensors.items():
        kind, _, key = name.partition("/")
        if kind not in parts:
            raise CoatError(f"{path}: unexpected tensor {name!r} in a coat-train checkpoint")
        parts[kind][key] = value
    return Checkpoint(parts["model"], parts["exp_avg"], parts["exp_avg_sq"], parts["ema"], state)


def _check_state(state: dict) -> str | None:
    """What is wrong with a checkpoint's JSON state, or None: the parts :func:`restore` and the
    command read, of the types they need, and the settings exactly ``TrainConfig``'s fields."""
    from .loop import TrainConfig  # the loop imports this module

    kinds = {"config": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "batch": int, "step": int}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            return f"{key!r} missing or not a {kind.__name__}"
    names = {f.name for f in fields(TrainConfig)}
    unknown, missing = sorted(set(state["config"]) - names), sorted(names - set(state["config"]))
    if unknown or missing:
        return f"settings unknown: {', '.join(unknown) or 'none'}; missing: {', '.join(missing) or 'none'}"
    opt = state["optimizer"]
    if not isinstance(opt.get("steps"), dict) or not isinstance(opt.get("groups"), list):
        return "'optimizer' without its steps and groups"
    if not all(isinstance(g, dict) and isinstance(g.get("names"), list) for g in opt["groups"]):
        return "optimizer groups without their parameter names"
    return None


def restore(ckpt: Checkpoint, model, optimizer, scheduler, ema, source: str) -> None:
    """Put the checkpoint's tensors and states into the run's objects (names and shapes checked)."""
    import paddle

    from ..weights import load_state_dict

    load_state_dict(model, ckpt.model, source=source)
    opt = ckpt.state["optimizer"]
    saved = [g["names"] for g in opt["groups"]]
    current = [list(g["names"]) for g in optimizer.state_dict()["param_groups"]]
    if saved != current:
        raise CoatError(
            f"{source}: the optimizer's parameter groups differ from this model's "
            f"({len(saved)} saved, {len(current)} here, or other parameters in them); "
            "resume with the code and settings that started the run"
        )
    try:
        optimizer.load_state_dict(
            {
                "state": {
                    name: {"step": step, "exp_avg": ckpt.exp_avg[name], "exp_avg_sq": ckpt.exp_avg_sq[name]}
                    for name, step in opt["steps"].items()
                },
                "param_groups": opt["groups"],
            }
        )
    except (KeyError, ValueError) as e:
        raise CoatError(f"{source}: the optimizer state does not fit the model ({e})") from None
    scheduler.load_state_dict(ckpt.state["scheduler"])
    if ema is not None:
        if not ckpt.ema:
            raise CoatError(f"{source}: the checkpoint has no EMA weights; resume without --model-ema")
        current = ema.state_dict()
        if set(current) != set(ckpt.ema):
            raise CoatError(f"{source}: the EMA weights do not fit the model")
        with paddle.no_grad():
            for key, value in ckpt.ema.items():
                current[key].set_value(paddle.to_tensor(value))
