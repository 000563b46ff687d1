"""lr, weight-decay and EMA-momentum schedules as pure functions of the global step.

The reference keeps these as stateful generators and fast-forwards them on resume; pure functions make resume
exact by construction and let a test ask for any step directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..optim import warmup_cosine


def ema_for_horizon(momentum: float, tuned_steps: int | None, total_steps: int) -> float:
    """``momentum`` tuned for ``tuned_steps`` steps, moved for a run of ``total_steps``: the target's total
    movement, the sum of 1 - momentum over the steps, stays what it was at the tuned horizon. A one-epoch recipe
    run for two epochs with its EMA unchanged lets the target drift twice as far (optimization.ema_steps;
    docs/cpu-recipe.md, "The horizon and the EMA")."""
    if tuned_steps is None or tuned_steps == total_steps:
        return momentum
    return max(0.0, 1.0 - (1.0 - momentum) * tuned_steps / total_steps)


@dataclass(frozen=True)
class Schedules:
    total_steps: int          # ipe_scale × epochs × iterations per epoch: where the schedules end
    warmup_steps: int
    start_lr: float
    lr: float
    final_lr: float
    weight_decay: float
    final_weight_decay: float
    ema_start: float
    ema_end: float

    @classmethod
    def from_config(cls, opt, steps_per_epoch: int, total_steps: int | None = None) -> Schedules:
        """``opt`` is an ``OptimizationConfig``; warmup is in epochs, as the reference's. With ``total_steps``
        (a run fixed in steps, e.g. by a time budget) the schedules run over ``ipe_scale`` × that many steps and
        the warm-up takes the same share of them as ``warmup`` epochs of ``epochs``."""
        if total_steps is None:
            total = int(opt.ipe_scale * opt.epochs * steps_per_epoch)
            warmup = int(opt.warmup * steps_per_epoch)
        else:
            total = int(opt.ipe_scale * total_steps)
            warmup = int(total_steps * min(opt.warmup / opt.epochs, 1.0))
        total = max(total, 1)
        ema_start, ema_end = (ema_for_horizon(m, opt.ema_steps, total) for m in opt.ema)
        return cls(total_steps=total, warmup_steps=warmup,
                   start_lr=opt.start_lr, lr=opt.lr, final_lr=opt.final_lr, weight_decay=opt.weight_decay,
                   final_weight_decay=opt.final_weight_decay, ema_start=ema_start, ema_end=ema_end)

    def lr_at(self, step: int) -> float:
        """Linear warmup from start_lr to lr, then cosine to final_lr (never below it)."""
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.lr, start=self.start_lr,
                             final=self.final_lr)

    def wd_at(self, step: int) -> float:
        """Cosine from weight_decay to final_weight_decay over the whole run (an increase, in the paper)."""
        progress = min(step / self.total_steps, 1.0)
        wd = self.final_weight_decay + (self.weight_decay - self.final_weight_decay) * 0.5 * (
            1.0 + math.cos(math.pi * progress))
        lo, hi = sorted((self.weight_decay, self.final_weight_decay))
        return min(max(wd, lo), hi)

    def momentum_at(self, step: int) -> float:
        """EMA momentum, linear from ema_start to ema_end over the run."""
        return self.ema_start + (self.ema_end - self.ema_start) * min(step / self.total_steps, 1.0)
