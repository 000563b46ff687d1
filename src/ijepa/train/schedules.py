"""lr, weight-decay and EMA-momentum schedules: pure functions of where the run is.

The horizon (``horizon.py``) maps each step to a position ``u`` on the schedules' scale of ``S`` configured steps
(``u = step`` for a fixed run); the schedules read ``u``. The reference keeps stateful generators and fast-forwards
them on resume; pure functions make resume exact by construction and let a test ask for any step directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..optim import warmup_cosine
from .horizon import Horizon


def ema_for_length(momentum: float, tuned_steps: int | None, total_steps: int) -> float:
    """``momentum`` tuned for a run of ``tuned_steps`` steps, moved for a run of ``total_steps``: the target's
    total movement, the sum of 1 - momentum over the steps, stays what it was at the tuned length
    (``optimization.ema_steps``). A one-epoch recipe run for two epochs with its EMA unchanged lets the target
    drift twice as far."""
    if tuned_steps is None or tuned_steps == total_steps:
        return momentum
    return max(0.0, 1.0 - (1.0 - momentum) * tuned_steps / total_steps)


@dataclass(frozen=True)
class Schedules:
    horizon: Horizon
    warmup_steps: int         # on the schedules' scale: warmup / epochs of the configured steps
    start_lr: float
    lr: float
    final_lr: float
    weight_decay: float
    final_weight_decay: float
    ema: tuple[float, float]
    ema_steps: int | None

    @classmethod
    def from_config(cls, opt, steps_per_epoch: int, horizon: Horizon) -> Schedules:
        """``opt`` is an ``OptimizationConfig``; warm-up is in epochs, as the reference's (with
        ``total_steps``, the same share of them)."""
        if opt.total_steps is None:
            warmup = int(opt.warmup * steps_per_epoch)
        else:
            warmup = int(opt.total_steps * min(opt.warmup / opt.epochs, 1.0))
        return cls(horizon, warmup, opt.start_lr, opt.lr, opt.final_lr, opt.weight_decay, opt.final_weight_decay,
                   tuple(opt.ema), opt.ema_steps)

    def progress(self, step: int) -> float:
        """From 0 at the first step to 1 at the planned last one."""
        return min(self.horizon.position(step) / self.horizon.nominal, 1.0)

    def lr_at(self, step: int) -> float:
        """Linear warm-up from start_lr to lr, then cosine to final_lr (never below it)."""
        return warmup_cosine(self.horizon.position(step), self.horizon.nominal, self.warmup_steps, self.lr,
                             start=self.start_lr, final=self.final_lr)

    def wd_at(self, step: int) -> float:
        """Cosine from weight_decay to final_weight_decay over the whole run (an increase, in the paper)."""
        wd = self.final_weight_decay + (self.weight_decay - self.final_weight_decay) * 0.5 * (
            1.0 + math.cos(math.pi * self.progress(step)))
        lo, hi = sorted((self.weight_decay, self.final_weight_decay))
        return min(max(wd, lo), hi)

    def momentum_at(self, step: int) -> float:
        """EMA momentum, linear from the first to the second value of ``ema`` over the run (each end moved for
        the planned length when ``ema_steps`` is set)."""
        start, end = (ema_for_length(m, self.ema_steps, self.horizon.schedule_total) for m in self.ema)
        return start + (end - start) * self.progress(step)
