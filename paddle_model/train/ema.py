"""An exponential moving average of the weights with timm's ``ModelEmaV3`` semantics.

``update(model, step)`` uses decay 0 (a copy) until ``step > update_after_step + 1``, then
``decay`` (or, with ``use_warmup``, ``1 - (1 + n / warmup_gamma) ** -warmup_power`` clamped to
[min_decay, decay]), and moves every float tensor of the state dict: ``ema = lerp(ema, model,
1 - decay)``. Like timm's, it walks the state dict's keys, so a tensor the model shares under k
keys (CoaT's one MLP as ``mlp2``/``mlp3``/``mlp4``) is moved k times per update.
"""

from __future__ import annotations

import paddle


def lerp(start: paddle.Tensor, end: paddle.Tensor, weight: float) -> paddle.Tensor:
    """torch's ``lerp``: ``start + w (end - start)`` for w < 0.5, else ``end - (end - start)(1 - w)``
    (so that weight 1 gives ``end`` exactly)."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


class ModelEma:
    """EMA weights by state-dict name; :meth:`state_dict` gives them for a model of the same kind."""

    def __init__(
        self,
        model: paddle.nn.Layer,
        decay: float = 0.9999,
        min_decay: float = 0.0,
        update_after_step: int = 0,
        use_warmup: bool = False,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
    ) -> None:
        self.decay = decay
        self.min_decay = min_decay
        self.update_after_step = update_after_step
        self.use_warmup = use_warmup
        self.warmup_gamma = warmup_gamma
        self.warmup_power = warmup_power
        self.keys: list[tuple[str, int]] = []  # (state-dict key, index of its tensor)
        self.tensors: list[paddle.Tensor] = []
        seen: dict[int, int] = {}
        for key, value in model.state_dict().items():
            if not paddle.is_floating_point(value):
                continue
            index = seen.setdefault(value.name, len(self.tensors))  # Paddle's unique tensor name
            if index == len(self.tensors):
                self.tensors.append(value.detach().clone())
            self.keys.append((key, index))

    def get_decay(self, step: int | None = None) -> float:
        if step is None:
            return self.decay
        step = max(0, step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        if self.use_warmup:
            decay = 1 - (1 + step / self.warmup_gamma) ** -self.warmup_power
            return max(min(decay, self.decay), self.min_decay)
        return self.decay

    @paddle.no_grad()
    def update(self, model: paddle.nn.Layer, step: int | None = None) -> None:
        weight = 1.0 - self.get_decay(step)
        current = model.state_dict()
        for key, index in self.keys:
            ema = self.tensors[index]
            ema.set_value(lerp(ema, current[key].astype(ema.dtype), weight))

    def state_dict(self) -> dict[str, paddle.Tensor]:
        return {key: self.tensors[index] for key, index in self.keys}
