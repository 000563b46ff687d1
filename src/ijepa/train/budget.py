"""Time-budgeted training: from "M minutes" to a step count, measured on the machine that runs it.

``optimization.minutes`` (``ijepa train --minutes M``) makes a run end within M minutes of wall time *annealed*,
not truncated: the run times a few throwaway steps, fixes ``optimization.total_steps`` so that the steps, the
checks and the checkpoints fit what is left, and every schedule (lr warm-up and cosine, weight decay, EMA ramp)
runs over that horizon. The plan is written to ``budget.json`` and the resolved ``config.yaml`` and kept in the
checkpoint, so re-running the same command resumes the same schedule (it does not measure again), and a run
with ``optimization.total_steps=N`` reproduces it. ``optimization.max_minutes`` is the same measurement used as a
cap: a run whose epochs fit keeps them (and its schedules) unchanged, one that would overrun is planned as a budget
of that many minutes. Under DDP every rank times its own steps and all take the
slowest rank's time, so they agree on one step count.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as tdist

from ..errors import ConfigError, RecipeTooSlowError

# The timing runs each mask draw twice and times the second run: the first use of a draw's sequence lengths pays for
# allocation, autotuning and (on AMX CPUs) oneDNN's kernel building, which the run pays once per length, not per
# step. The step time varies with the draw (the batch's shortest context sets its length), so the plan times as
# many draws as TIMING_SHARE of the budget affords, between MIN_DRAWS and MAX_DRAWS (docs/cpu-recipe.md, "The
# budget curve").
TIMING_SHARE = 0.03
MIN_DRAWS, MAX_DRAWS = 2, 16
# Left unplanned, for what the plan cannot see (the last checkpoint write, the summary, timing noise).
MARGIN = 0.03


@dataclass(frozen=True)
class BudgetPlan:
    """What a time budget became: the run's steps, and the measurements behind them (``budget.json``)."""

    minutes: float
    total_steps: int
    step_seconds: float        # one training step, the slowest rank's, after warm-up
    check_seconds: float       # one full check (monitor) at an epoch end
    setup_seconds: float       # spent before planning (start-up and the measurement itself)
    steps_per_epoch: int
    capped: bool = True        # False: a cap (optimization.max_minutes) that the run's own epochs fit under

    def to_dict(self) -> dict:
        return asdict(self)


def total_steps_of(opt, steps_per_epoch: int) -> int:
    """The steps a run of ``opt`` (an ``OptimizationConfig``) takes: total_steps, else its epochs, within max_steps."""
    total = opt.total_steps or opt.epochs * steps_per_epoch
    return min(total, opt.max_steps) if opt.max_steps else total


def slowest(seconds: float, device: torch.device) -> float:
    """The largest ``seconds`` over all ranks (itself when not distributed)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t.item())


def plan_steps(minutes: float, *, step_seconds: float, check_seconds: float, setup_seconds: float,
               steps_per_epoch: int, key: str = "optimization.minutes") -> BudgetPlan:
    """The most steps whose training plus the epoch-end checks fit ``minutes`` after ``setup_seconds``.

    Raises :class:`ConfigError`, naming ``key`` (the setting the minutes came from), when not one step fits."""
    left = minutes * 60.0 * (1 - MARGIN) - setup_seconds - check_seconds  # the final check always runs

    def cost(n: int) -> float:  # n steps, and a check (and a checkpoint, cheap beside it) at each epoch end
        return n * step_seconds + (n // steps_per_epoch) * check_seconds

    steps = max(0, math.floor(left / (step_seconds + check_seconds / steps_per_epoch)))  # a lower bound
    while cost(steps + 1) <= left:
        steps += 1
    if steps < 1:
        need = (setup_seconds + step_seconds + check_seconds) / 60 / (1 - MARGIN)
        raise ConfigError(f"{key}={minutes:g} leaves no time for one training step here "
                          f"(start-up {setup_seconds:.1f} s, one step {step_seconds:.2f} s, the final check "
                          f"{check_seconds:.1f} s): give at least {need:.2f} minutes")
    return BudgetPlan(minutes, steps, step_seconds, check_seconds, setup_seconds, steps_per_epoch)


def time_steps(run_step: Callable[[int], None], state: dict[str, torch.nn.Module | torch.optim.Optimizer],
               device: torch.device, budget_seconds: float | None = None) -> float:
    """Seconds per step of ``run_step(d)`` (which trains one step on mask draw ``d``), measured on throwaway steps:
    each draw runs once untimed, then once timed, over as many draws as ``TIMING_SHARE`` of ``budget_seconds``
    affords (``MIN_DRAWS`` without a budget). The modules and optimizers in ``state`` and the global RNG streams
    are restored afterwards, so the run starts exactly as if nothing had been measured. Under DDP every rank runs
    the same number of steps and returns the slowest rank's time."""
    saved = {k: copy.deepcopy(v.state_dict()) for k, v in state.items()}
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    timed: list[float] = []
    draws = MIN_DRAWS
    with torch.random.fork_rng(devices=cuda):
        while len(timed) < draws:
            d = len(timed)
            run_step(d)
            _sync(device)
            t0 = time.perf_counter()
            run_step(d)
            _sync(device)
            timed.append(time.perf_counter() - t0)
            if len(timed) == MIN_DRAWS and budget_seconds:  # ranks agree on the first estimate, so on the count
                first = slowest(sum(timed) / len(timed), device)
                draws = max(MIN_DRAWS, min(MAX_DRAWS, int(TIMING_SHARE * budget_seconds / (2 * first))))
    for k, v in state.items():
        v.load_state_dict(saved[k])
    return slowest(sum(timed) / len(timed), device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def horizon(cfg, ckpt, run_step: Callable[[int], None], check: Callable[[], None], state: dict, device,
            t_start: float, min_fit: float | None = None) -> tuple[int | None, BudgetPlan | None]:
    """The run's planned step count and, for a budget measured now, its plan: the count a resumed checkpoint
    recorded, else ``optimization.total_steps``, else one planned from ``optimization.minutes`` (timing
    ``run_step`` and ``check``), else None (the run is ``epochs`` long). With ``min_fit``, a cap
    (``optimization.max_minutes``) whose minutes fit fewer than that share of the configured steps at the measured
    step time raises :class:`RecipeTooSlowError` before the check is timed (a new run only)."""
    opt = cfg.optimization
    budget, key = ((opt.minutes, "optimization.minutes") if opt.minutes is not None
                   else (opt.max_minutes, "optimization.max_minutes"))
    if ckpt.resumed_total_steps is not None:
        if opt.total_steps is not None and opt.total_steps != ckpt.resumed_total_steps:
            raise ConfigError(f"optimization.total_steps={opt.total_steps}, but the checkpoint being resumed was "
                              f"planned with {ckpt.resumed_total_steps} steps: drop the key to continue it")
        return ckpt.resumed_total_steps, None
    if opt.total_steps is not None or budget is None:
        return opt.total_steps, None
    if ckpt.resumed_step > 0 and opt.minutes is None:
        return None, None  # a cap that bound would have recorded its step count: the epochs fitted it
    if ckpt.resumed_step > 0:
        raise ConfigError("optimization.minutes: the checkpoint being resumed was not started with a time budget; "
                          "resume it without one (or start a new run folder)")
    step_s = time_steps(run_step, state, device, budget * 60)
    setup_s = slowest(time.perf_counter() - t_start, device)
    if min_fit is not None and opt.minutes is None:
        full = total_steps_of(opt, ckpt.steps_per_epoch)
        fit = max(0, int((budget * 60 - setup_s) / step_s))  # before the checks' time: a bound the plan only lowers
        if fit < min_fit * full:
            raise RecipeTooSlowError(f"at {step_s:.3f} s a step measured here, optimization.max_minutes="
                                     f"{budget:g} fits about {fit} of the {full} configured steps, under the "
                                     f"{min_fit:.0%} this recipe needs")
    with torch.random.fork_rng(devices=[]):
        t0 = time.perf_counter()
        check()
        check_s = slowest(time.perf_counter() - t0, device)
    setup_s = slowest(time.perf_counter() - t_start, device)  # again: the check ran since
    plan = plan_steps(budget, step_seconds=step_s, check_seconds=check_s, setup_seconds=setup_s,
                      steps_per_epoch=ckpt.steps_per_epoch, key=key)
    if opt.minutes is None:  # a cap (a budget, when both are given, replaces the cap)
        full = total_steps_of(opt, ckpt.steps_per_epoch)  # total_steps is None here
        if plan.total_steps >= full:  # the run as configured fits: keep its own schedules, bit for bit
            return None, dataclasses.replace(plan, total_steps=full, capped=False)
    return plan.total_steps, plan
