"""How long a run is: a horizon that the loop asks where the run is and whether to stop.

A run's length is its configured steps, ``S`` (``optimization.epochs`` x steps per epoch, or
``optimization.total_steps``). The schedules (lr, weight decay, EMA; ``schedules.py``) are functions of a position
``u`` from 0 to ``S``; the horizon maps each step to its position:

- a **fixed** horizon trains the ``S`` steps, ``u = step``;
- a **timed** horizon (``optimization.minutes``) trains as many of them as fit in the minutes. It measures its own
  steps as the run goes and, at regular points, re-plans the last step ``T`` from the time left and the recent
  step time: a slow start, a throttling laptop or a busy neighbour moves ``T``, not the end time. After a re-plan
  at step ``s`` (position ``u_s``) the steps left share the positions left, ``u = u_s + (S - u_s)(step - s) /
  (T - s)``, so every schedule continues smoothly and is annealed to the last step, wherever that lands. Until
  the run is at speed (past a busy start-up: :meth:`TimedHorizon._trusts`) a re-plan moves only the last step and
  the schedules keep the configured pace, ``u = step``: a plan made on a neighbour's minute would otherwise rush
  the warm-up, and the run would pay for it after the machine is its own again;
- a **replayed** horizon (``optimization.replay``) follows the plan an earlier timed run recorded, which
  reproduces that run bit for bit.

The plan's record (every re-plan: its step, its last step, the step time it used) goes into ``horizon.json`` and
the checkpoint, so a resumed run continues it. Under DDP every rank re-plans at the same steps with the slowest
rank's times, so they agree.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError

# Left unplanned at the end, for what the plan cannot see: the last checkpoint write, the summary, the process's
# own start and exit.
MARGIN = 0.03
# A timed run re-plans about this often (as a share of its minutes), and after at least MIN_WINDOW steps, from the
# mean step time of the latest steps that cover RECENT_SHARE of its minutes: long enough that one slow step does
# not move the plan, short enough to follow a machine whose speed changed.
REPLAN_SHARE = 0.02
RECENT_SHARE = 0.05
MIN_WINDOW = 2


@dataclass(frozen=True)
class Replan:
    """One entry of a horizon's record: from ``step`` on, the run ends at ``total``."""

    step: int
    total: int
    step_seconds: float | None = None  # the step time this plan was made with (None: not timed)
    seconds_left: float | None = None  # the training time it had left
    held: bool = False  # made before the run was at speed: it moves the last step, not the schedules' pace


class Horizon:
    """A fixed or replayed horizon: the run's steps and the position of each step on the schedules' scale.

    ``nominal`` is the configured length ``S``; ``record`` the plan (first entry at step 0); ``stop_at`` an
    earlier stop (``optimization.max_steps``) that leaves the schedules as they are."""

    kind = "fixed"

    def __init__(self, nominal: int, record: list[Replan] | None = None, stop_at: int | None = None,
                 pending: list[Replan] | None = None):
        self.nominal = max(int(nominal), 1)
        self.record = list(record) if record else [Replan(0, self.nominal)]
        self.stop_at = stop_at
        self.pending = list(pending or [])  # a replay's re-plans not reached yet, applied as the run reaches them

    @property
    def total(self) -> int:
        """The run's last step, as planned now."""
        return self.record[-1].total

    @property
    def schedule_total(self) -> int:
        """The last step the schedules are paced for: the latest plan not held (the configured length until one)."""
        return next(r.total for r in reversed(self.record) if not r.held)

    @property
    def end(self) -> int:
        """Where the loop stops: the planned last step, or ``max_steps`` before it."""
        return min(self.total, self.stop_at) if self.stop_at else self.total

    def done(self, step: int) -> bool:
        return step >= self.end

    def position(self, step: int) -> float:
        """The schedules' position of ``step``: ``step`` itself while the plan is the configured length."""
        u_prev, prev = 0.0, None
        for r in self.record:
            if r.step > step:
                break
            if r.held:  # the schedules keep the pace of the plan before it
                continue
            if prev is not None:  # where the previous segment had got to when this one began
                u_prev = _along(u_prev, prev, r.step, self.nominal)
            prev = r
        if prev.step == 0 and prev.total == self.nominal:
            return float(step)
        return _along(u_prev, prev, step, self.nominal)

    def after_step(self, step: int, now: float | None = None, seconds: float = 0.0) -> Replan | None:
        """Called after each step with the number of steps done (and the clock, and the step's cost): a fixed
        horizon never re-plans; a replayed one takes the recorded re-plan made at this step."""
        if self.pending and self.pending[0].step <= step:
            self.record.append(self.pending.pop(0))
            return self.record[-1]
        return None

    def state_dict(self) -> dict:
        return {"kind": self.kind, "nominal": self.nominal, "record": [asdict(r) for r in self.record]}

    def to_json(self) -> dict:
        return {**self.state_dict(), "total": self.total}


def _along(u0: float, seg: Replan, step: int, nominal: int) -> float:
    """Position of ``step`` on a segment that began at ``seg.step`` (position ``u0``) and ends at ``seg.total``."""
    span = seg.total - seg.step
    if span <= 0:
        return float(nominal)
    return u0 + (nominal - u0) * min(step - seg.step, span) / span


class TimedHorizon(Horizon):
    """The steps that fit ``minutes`` of wall time, counted from ``t_start``, re-planned as the run goes.

    ``clock`` returns seconds (``time.perf_counter``; tests pass a scripted one). One full check's cost (timed
    once, beside the first steps) is reserved for each epoch end the plan reaches and for the end of the run.
    ``slowest`` turns this rank's seconds into the slowest rank's (identity when not distributed)."""

    kind = "timed"

    def __init__(self, nominal: int, minutes: float, steps_per_epoch: int, *, t_start: float,
                 clock: Callable[[], float] = time.perf_counter, slowest: Callable[[float], float] = float,
                 stop_at: int | None = None, state: dict | None = None):
        super().__init__(nominal, None, stop_at)
        self.minutes, self.steps_per_epoch = minutes, steps_per_epoch
        self.clock, self.slowest = clock, slowest
        self.spent = 0.0           # training seconds of earlier processes (a resumed run), up to their checkpoint
        self.t_start = t_start     # when this process's share of the minutes began
        self.check_steps: float | None = None  # one check's cost, in steps of the time it was measured at
        self.measuring = False  # from begin() on
        self._checked = 0.0  # seconds of a check timed since the last step (not the next step's)
        self.best = math.inf  # the fastest recent step time seen at a re-plan
        self.trusted = False  # whether a re-plan has been made at speed (before that, re-plans are held)
        self.check_guess = 0.0
        self.recent: collections.deque[float] = collections.deque(maxlen=4096)  # the latest steps' seconds
        self.last_now: float | None = None  # the clock at the last step's end
        self.next_replan = 0
        if state is not None:
            self.load_state_dict(state)

    # ---------------------------------------------------------------------------------------------- time

    def elapsed(self, now: float | None = None) -> float:
        return self.spent + ((self.clock() if now is None else now) - self.t_start)

    def seconds_left(self, now: float | None = None) -> float:
        return self.minutes * 60.0 * (1 - MARGIN) - self.elapsed(now)

    def begin(self, step: int, time_check: Callable[[int], float], check_guess: float) -> None:
        """Start measuring at ``step`` (0, or the resumed step). ``time_check(step)`` runs one full check and
        returns its seconds; a fresh run times one once its steps run at the machine's full speed (a busy start
        would make the check, and the time it takes from training, several times what it is), planning with
        ``check_guess`` steps a check until then."""
        self._time_check, self.check_guess = time_check, check_guess
        self.measuring = True
        self.next_replan = step + MIN_WINDOW

    # ---------------------------------------------------------------------------------------------- plan

    def after_step(self, step: int, now: float | None = None, seconds: float = 0.0) -> Replan | None:
        """``step`` steps are done, the last in ``seconds`` (what it cost the loop, from the end of the step before:
        the loop's own work between steps counts, the epoch-end checks do not, as the plan reserves them): at a
        re-plan point, plan the last step again from the recent step time."""
        if not self.measuring:
            return None
        seconds, self._checked = seconds - self._checked, 0.0  # the timed check ran inside the last step's time
        self.recent.append(seconds)
        self.last_now = now
        if step < self.next_replan:
            return None
        tau = self.slowest(self.recent_step_seconds())
        self.best = min(self.best, tau)
        now = self.clock() if now is None else now
        left = -self.slowest(-self.seconds_left(now))  # the rank with the least time left decides
        if self.check_steps is None and self._at_speed(tau, left):
            # a check's cost in steps, timed right after the steps it is compared with
            self._checked = self._time_check(step)
            self.check_steps = self.slowest(self._checked) / tau
            left = -self.slowest(-self.seconds_left())  # the check took time
        total = self.plan(step, left, tau)
        # the next re-plan about REPLAN_SHARE of the minutes from now, in steps (every rank computes the same)
        self.next_replan = step + max(MIN_WINDOW, int(REPLAN_SHARE * self.minutes * 60.0 / tau))
        was_trusted = self.trusted
        # trusted from the first plan at speed on, or the last plan before the end, which anneals the run
        self.trusted = self.trusted or self._trusts(tau, left) or total <= self.next_replan
        if total == self.total and (self.trusted == was_trusted or not self.record[-1].held):
            return None  # nothing moves: the same last step, and the same pace
        r = Replan(step, total, round(tau, 6), round(left, 3), held=not self.trusted)
        self.record.append(r)
        return r

    def _trusts(self, tau: float, left: float) -> bool:
        """Whether a plan made now may set the schedules' pace: steps run within 15% of the fastest seen, 15% of the
        minutes in (a busy first minute has left the recent steps by then); or 60% of them have gone. Until then
        the pace is the configured length's: a start-up slowed by another program would otherwise plan a short run
        and race the warm-up through it."""
        gone = 1.0 - left / (self.minutes * 60.0 * (1 - MARGIN))
        return (gone >= 0.15 and tau <= 1.15 * self.best) or gone >= 0.6

    def _at_speed(self, tau: float, left: float) -> bool:
        """Whether to time the check now: steps run within 15% of the fastest seen, 30% of the minutes in (past a
        busy start-up); or 60% of them have gone. Decided from values every rank shares, so ranks time it
        together."""
        gone = 1.0 - left / (self.minutes * 60.0 * (1 - MARGIN))
        return (gone >= 0.3 and tau <= 1.15 * self.best) or gone >= 0.6

    def recent_step_seconds(self) -> float:
        """The mean of the latest steps that cover ``RECENT_SHARE`` of the minutes (at least ``MIN_WINDOW``)."""
        total, n = 0.0, 0
        for seconds in reversed(self.recent):
            total, n = total + seconds, n + 1
            if n >= MIN_WINDOW and total >= RECENT_SHARE * self.minutes * 60.0:
                break
        return total / max(n, 1)

    def plan(self, step: int, left: float, tau: float) -> int:
        """The last step: as many steps after ``step`` as fit ``left`` seconds at ``tau`` a step, with a check
        at each epoch end they reach and one at the end; never past the configured length."""
        check = (self.check_steps if self.check_steps is not None else self.check_guess) * tau
        budget = left - check  # the final check always runs

        def cost(n: int) -> float:
            epoch_ends = (step + n) // self.steps_per_epoch - step // self.steps_per_epoch
            return n * tau + epoch_ends * check

        n = max(0, math.floor(budget / (tau + check / self.steps_per_epoch)))  # a lower bound
        while step + n < self.nominal and cost(n + 1) <= budget:
            n += 1
        return min(step + n, self.nominal)

    # ---------------------------------------------------------------------------------------------- state

    def state_dict(self, now: float | None = None) -> dict:
        """The plan so far and the time it has used, as of ``now`` (default: the last step's end)."""
        now = now if now is not None else self.last_now
        return {**super().state_dict(), "minutes": self.minutes, "spent": self.elapsed(now),
                "check_steps": self.check_steps, "next_replan": self.next_replan, "trusted": self.trusted}

    def load_state_dict(self, state: dict) -> None:
        self.nominal = int(state["nominal"])
        self.record = [Replan(**r) for r in state["record"]]
        self.spent, self.check_steps = float(state["spent"]), state["check_steps"]
        # a record without a held plan was trusted from its first re-plan (or has not re-planned)
        self.trusted = state.get("trusted", len(self.record) > 1 and not any(r.held for r in self.record))


def process_started(clock: Callable[[], float] = time.perf_counter) -> float:
    """When this process started, on ``clock``'s scale (``time.perf_counter``): the ``ijepa`` command's time limit
    counts its start-up (imports, the CPU default's planning) too. Now, where the system does not say (not Linux)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = float(fields[19]) / os.sysconf("SC_CLK_TCK")  # seconds after boot
        return clock() - max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return clock()


def build_horizon(opt, steps_per_epoch: int, *, t_start: float, clock: Callable[[], float] = time.perf_counter,
                  slowest: Callable[[float], float] = float, resumed: dict | None = None,
                  step: int = 0) -> Horizon:
    """The horizon ``opt`` (an ``OptimizationConfig``) asks for; ``resumed`` is the horizon state of the checkpoint
    a run resumes at ``step``, which it continues."""
    nominal = opt.total_steps or opt.epochs * steps_per_epoch
    if opt.replay is not None:
        data = read_record(opt.replay)
        if data["nominal"] != nominal:
            raise ConfigError(f"optimization.replay: {opt.replay} was planned over {data['nominal']} configured "
                              f"steps, this config has {nominal}: replay it with the same data and length keys")
        record = [Replan(**r) for r in data["record"]]
        reached = [r for r in record if r.step <= step]
        return Horizon(nominal, reached, opt.max_steps, pending=record[len(reached):])
    if resumed is not None and resumed["nominal"] != nominal:
        raise ConfigError(f"the checkpoint being resumed was planned over {resumed['nominal']} steps, this config "
                          f"has {nominal}: resume it with the same optimization.epochs / total_steps and data")
    if opt.minutes is None:
        if resumed is not None and resumed["kind"] == "timed":
            raise ConfigError("the checkpoint being resumed is a timed run: resume it with the same "
                              "optimization.minutes (ijepa train --minutes)")
        return Horizon(nominal, None, opt.max_steps)
    if resumed is not None and resumed["kind"] != "timed":
        raise ConfigError("optimization.minutes: the checkpoint being resumed was not started with a time limit; "
                          "resume it without one (or start a new run folder)")
    return TimedHorizon(nominal, opt.minutes, steps_per_epoch, t_start=t_start, clock=clock, slowest=slowest,
                        stop_at=opt.max_steps, state=resumed)


def read_record(path: str | Path) -> dict:
    """A horizon.json (or a run folder holding one)."""
    p = Path(path)
    p = p / "horizon.json" if p.is_dir() else p
    try:
        data = json.loads(p.read_text())
        data["record"], data["nominal"]  # noqa: B018 (the keys a replay needs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"optimization.replay: {p} is not a horizon record ({type(e).__name__}: {e})") from None
    return data
