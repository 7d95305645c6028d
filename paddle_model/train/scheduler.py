"""timm's ``CosineLRScheduler``, closed-form: the lr is a function of the epoch or update.

Unlike ``paddle.optimizer.lr.LinearWarmup`` (which shifts the schedule it wraps), the warmup
here replaces the first ``warmup_t`` values of the cosine: ``warmup_lr_init + t * (base -
warmup_lr_init) / warmup_t`` for ``t < warmup_t``; then ``lr_min + (base - lr_min) / 2 * (1 +
cos(pi * t_curr / t_i))`` with ``t`` counted from 0 (or from the end of the warmup with
``warmup_prefix``), restarts every ``t_initial`` (times ``cycle_mul``), the peak times
``cycle_decay`` per cycle, and ``lr_min`` after ``cycle_limit`` cycles. As in timm, the loop
calls :meth:`step` with ``epoch + 1`` at the end of each epoch and :meth:`step_update` with the
number of updates so far after each; only the one matching ``t_in_epochs`` changes the lr.
The arithmetic is timm's, operation for operation, so the values are equal, not close.
"""

from __future__ import annotations

import math


class CosineLRScheduler:
    """Cosine decay with linear warmup over an :class:`~paddle_model.train.optim.AdamW`'s groups
    (or, with ``optimizer=None``, over one group whose base lr is ``base_lr``)."""

    def __init__(
        self,
        optimizer,
        t_initial: int,
        lr_min: float = 0.0,
        cycle_mul: float = 1.0,
        cycle_decay: float = 1.0,
        cycle_limit: int = 1,
        warmup_t: int = 0,
        warmup_lr_init: float = 0.0,
        warmup_prefix: bool = False,
        t_in_epochs: bool = True,
        k_decay: float = 1.0,
        base_lr: float | None = None,
    ) -> None:
        if t_initial <= 0 or lr_min < 0:
            raise ValueError(f"t_initial must be > 0 and lr_min >= 0, got {t_initial} and {lr_min}")
        self.optimizer = optimizer
        groups = optimizer.param_groups if optimizer is not None else []
        self.base_values = [g["initial_lr"] for g in groups] if groups else [base_lr]
        self.t_initial = t_initial
        self.lr_min = lr_min
        self.cycle_mul = cycle_mul
        self.cycle_decay = cycle_decay
        self.cycle_limit = cycle_limit
        self.warmup_t = warmup_t
        self.warmup_lr_init = warmup_lr_init
        self.warmup_prefix = warmup_prefix
        self.t_in_epochs = t_in_epochs
        self.k_decay = k_decay
        if warmup_t:
            self.warmup_steps = [(v - warmup_lr_init) / warmup_t for v in self.base_values]
        else:
            self.warmup_steps = [1 for _ in self.base_values]
        self.lrs = list(self.base_values)
        self._update_groups(self.base_values)
        if warmup_t:
            self._update_groups([warmup_lr_init] * len(self.base_values))

    def get_lr(self, t: int) -> list[float]:
        """The lr of each group at time ``t`` (epochs or updates, as the schedule counts)."""
        if t < self.warmup_t:
            return [self.warmup_lr_init + t * s for s in self.warmup_steps]
        if self.warmup_prefix:
            t = t - self.warmup_t
        if self.cycle_mul != 1:
            i = math.floor(math.log(1 - t / self.t_initial * (1 - self.cycle_mul), self.cycle_mul))
            t_i = self.cycle_mul**i * self.t_initial
            t_curr = t - (1 - self.cycle_mul**i) / (1 - self.cycle_mul) * self.t_initial
        else:
            i = t // self.t_initial
            t_i = self.t_initial
            t_curr = t - (self.t_initial * i)
        if i >= self.cycle_limit:
            return [self.lr_min for _ in self.base_values]
        gamma = self.cycle_decay**i
        k = self.k_decay
        return [
            self.lr_min + 0.5 * (v * gamma - self.lr_min) * (1 + math.cos(math.pi * t_curr**k / t_i**k))
            for v in self.base_values
        ]

    def step(self, epoch: int) -> None:
        """End of an epoch: ``epoch`` is the next epoch's index (timm's ``step(epoch + 1)``)."""
        if self.t_in_epochs:
            self._update_groups(self.get_lr(epoch))

    def step_update(self, num_updates: int) -> None:
        """After an update: ``num_updates`` counted so far, this one included."""
        if not self.t_in_epochs:
            self._update_groups(self.get_lr(num_updates))

    def _update_groups(self, values: list[float]) -> None:
        self.lrs = list(values)
        if self.optimizer is None:
            return
        for group, value in zip(self.optimizer.param_groups, values):
            group["lr"] = value * group["lr_scale"] if "lr_scale" in group else value

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update({k: v for k, v in state.items() if k in self.__dict__})
