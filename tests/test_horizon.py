"""The run's length (train/horizon.py): fixed, timed and replayed horizons, on a scripted clock — no test here
depends on how fast or how busy the machine is."""

import csv
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, cfg_with

from ijepa.config_sections import OptimizationConfig
from ijepa.errors import ConfigError
from ijepa.train.checkpoint import load_checkpoint
from ijepa.train.horizon import MARGIN, Horizon, Replan, TimedHorizon, build_horizon
from ijepa.train.loop import train
from ijepa.train.schedules import Schedules

IPE = 468


class Clock:
    """Scripted seconds: the simulation moves ``t``; the horizon reads it."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(minutes, step_cost, *, check=10, guess=8, nominal=IPE, state=None, stop_after=None, clock=None):
    """Train a timed horizon on a scripted clock: ``step_cost(t)`` is the step that starts at second t. Returns
    (horizon, steps done, the second the run ends at: after its final check). A check costs ``check`` steps; the
    horizon guesses ``guess`` until it has timed one."""
    clock = clock or Clock()
    h = TimedHorizon(nominal, minutes, IPE, t_start=clock.t, clock=clock, state=state)
    step = 0 if state is None else state["step"]
    checked = [0.0]

    def time_check(step):  # the first check, timed beside the first steps, at the speed steps have then
        checked[0] = check * step_cost(clock.t)
        clock.t += checked[0]
        return checked[0]

    h.begin(step, time_check, guess)
    while not h.done(step):
        step_seconds = step_cost(clock.t)
        clock.t += step_seconds
        cost, checked[0] = step_seconds + checked[0], 0.0  # as the loop measures it: the check ran in between
        step += 1
        if step % IPE == 0 and not h.done(step):
            clock.t += check * step_cost(clock.t)
        h.after_step(step, clock.t, cost)
        if stop_after is not None and step == stop_after:
            return h, step, clock.t
    return h, step, clock.t + check * step_cost(clock.t)


def test_a_fixed_horizon_is_the_configured_steps_and_positions_are_the_steps():
    h = Horizon(IPE)
    assert h.total == h.end == IPE and not h.done(IPE - 1) and h.done(IPE)
    assert [h.position(s) for s in (0, 1, 467)] == [0.0, 1.0, 467.0]
    assert Horizon(IPE, stop_at=10).end == 10 and Horizon(IPE, stop_at=10).total == IPE


def test_a_quiet_machine_gets_the_steps_that_fit_and_ends_in_time():
    h, steps, end = simulate(6, lambda t: 1.0)
    assert 300 <= steps < IPE  # 6 minutes of 1-s steps, less the checks and the margin
    assert end <= 6 * 60 and end >= 6 * 60 * (1 - MARGIN) - 2.0
    assert h.position(steps) == pytest.approx(IPE)  # annealed to the last step


def test_the_configured_length_is_the_most_a_limit_trains():
    h, steps, end = simulate(60, lambda t: 1.0)
    assert steps == IPE and len(h.record) == 1  # it fit: the plan never changed, positions are the steps
    assert h.position(100) == 100.0


@pytest.mark.parametrize("slower", [3.5, 6.0])
def test_a_slow_start_moves_the_last_step_not_the_end_time(slower):
    quiet = simulate(6, lambda t: 1.0)[1]
    # a busy neighbour for the first 60 s: steps (and the check timed among them) `slower` times slower; 3.5x is
    # what two busy loops did to a 2-core machine's steps (benchmarks/busy.py)
    h, steps, end = simulate(6, lambda t: slower if t < 60 else 1.0)
    assert end <= 6 * 60 * 1.03
    lost = 60 * (1 - 1 / slower)  # what the slow minute cost, in steps: the check waits for full speed
    assert steps >= 0.97 * (quiet - lost)  # the rest of the minutes are used
    if slower <= 3.5:
        assert steps >= 0.85 * quiet
    assert len(h.record) > 2  # re-planned as the machine's speed changed
    assert h.check_steps == pytest.approx(10, rel=0.05)  # timed at full speed: a check's cost in steps


def test_a_slowdown_late_in_the_run_still_ends_in_time():
    h, steps, end = simulate(6, lambda t: 1.0 if t < 180 else 2.5)
    assert end <= 6 * 60 * 1.03
    assert steps < simulate(6, lambda t: 1.0)[1]


def test_noisy_steps_on_a_busy_machine_neither_overrun_nor_stop_early():
    # from minute 3 two busy loops made steps take 2.5 to 7 s, each its own (seen on a 2-core machine)
    rng = random.Random(0)
    h, steps, end = simulate(6, lambda t: 1.0 if t < 180 else rng.uniform(2.5, 7.0))
    assert 6 * 60 * 0.9 <= end <= 6 * 60 * 1.03


def test_positions_are_continuous_and_reach_the_end_at_the_last_step():
    h, steps, _ = simulate(6, lambda t: 6.0 if t < 60 else (1.0 if t < 200 else 1.8))
    u = [h.position(s) for s in range(steps + 1)]
    deltas = [b - a for a, b in zip(u, u[1:])]
    assert min(deltas) > 0  # never back, never stalled
    # no jump at a re-plan: every step moves at the rate of the segment it is in (the steps left share the
    # positions left), the first step of a new segment included
    # (a plan held before the run was at speed keeps the pace of the plan before it)
    rates = {r.step: (IPE - h.position(r.step)) / (r.total - r.step) for r in h.record if not r.held}
    assert any(r.held for r in h.record) and len(rates) > 1
    for s_, d in enumerate(deltas):
        seg = max(k for k in rates if k <= s_)
        assert d == pytest.approx(rates[seg])
    assert u[-1] == pytest.approx(IPE)


def test_a_busy_start_moves_the_last_step_but_not_the_warm_up():
    # the plans made while a neighbour slows the first minute are held: the schedules keep the configured pace
    # (u = step) until a plan is made at speed, so the warm-up is the quiet run's, step for step
    opt = OptimizationConfig(epochs=1, warmup=0.25, lr=5e-4, start_lr=1e-4, final_lr=1e-6, ema=(0.999, 1.0))
    busy, steps, _ = simulate(10.5, lambda t: 3.5 if t < 60 else 1.25)
    quiet, quiet_steps, _ = simulate(10.5, lambda t: 1.25)
    held = [r for r in busy.record if r.held]
    assert held and held[0].total < 0.6 * IPE  # the busy minute planned a short run ...
    trusted = next(r for r in busy.record[1:] if not r.held)
    assert trusted.step > held[-1].step
    s, q = Schedules.from_config(opt, IPE, busy), Schedules.from_config(opt, IPE, quiet)
    for step in range(0, trusted.step + 1, 5):  # ... which did not move the schedules
        assert busy.position(step) == step and s.lr_at(step) == pytest.approx(q.lr_at(step))
    assert busy.position(steps) == pytest.approx(IPE) and s.lr_at(steps) == pytest.approx(1e-6)
    assert steps >= 0.9 * quiet_steps


def test_a_run_that_ends_before_it_is_at_speed_is_still_annealed():
    # a run so short that no re-plan comes after the busy start: its last plan is trusted, the schedules anneal
    h, steps, _ = simulate(0.5, lambda t: 3.0 if t < 10 else 1.0)
    assert h.position(steps) == pytest.approx(IPE)


def test_the_schedules_anneal_over_the_planned_steps():
    h, steps, _ = simulate(6, lambda t: 6.0 if t < 60 else 1.0)
    opt = OptimizationConfig(epochs=1, warmup=0.25, lr=5e-4, start_lr=1e-4, final_lr=1e-6, ema=(0.999, 1.0))
    s = Schedules.from_config(opt, IPE, h)
    assert s.lr_at(steps) == pytest.approx(1e-6) and s.momentum_at(steps) == pytest.approx(1.0)
    assert s.lr_at(steps // 2) > 1e-4


def test_a_resumed_timed_run_continues_its_plan():
    cost = lambda t: 6.0 if t < 60 else 1.0  # noqa: E731
    whole, steps, end = simulate(6, cost)
    clock = Clock()
    first, k, t_kill = simulate(6, cost, stop_after=150, clock=clock)
    state = {**first.state_dict(now=t_kill), "step": k}
    # the next process: the time up to the checkpoint counts, its own start is a new zero
    resumed, steps2, end2 = simulate(6, lambda t: cost(t + t_kill), state=state)
    assert resumed.record[: len(first.record)] == first.record  # the plan so far, kept
    assert abs(steps2 - steps) <= 2 and t_kill + end2 <= 6 * 60 * 1.03
    assert resumed.position(steps2) == pytest.approx(IPE)


def test_a_replayed_horizon_follows_the_record(tmp_path):
    h, steps, _ = simulate(6, lambda t: 6.0 if t < 60 else 1.0)
    (tmp_path / "horizon.json").write_text(json.dumps(h.to_json()))
    opt = OptimizationConfig(epochs=1, replay=str(tmp_path / "horizon.json"))
    r = build_horizon(opt, IPE, t_start=0.0)
    positions = []
    step = 0
    while not r.done(step):
        positions.append(r.position(step))
        step += 1
        r.after_step(step)
    assert step == steps and positions == [h.position(s) for s in range(steps)]
    # resumed part-way, it takes the re-plans it had reached and waits for the rest
    mid = build_horizon(opt, IPE, t_start=0.0, step=100)
    assert mid.record == [x for x in h.record if x.step <= 100]


def test_length_keys_that_do_not_match_the_checkpoint_are_one_line_errors(tmp_path):
    timed = TimedHorizon(IPE, 6, IPE, t_start=0.0).state_dict(now=0.0)
    with pytest.raises(ConfigError, match="timed run: resume it with the same optimization.minutes"):
        build_horizon(OptimizationConfig(epochs=1), IPE, t_start=0.0, resumed=timed)
    with pytest.raises(ConfigError, match="was not started with a time limit"):
        build_horizon(OptimizationConfig(epochs=1, minutes=6), IPE, t_start=0.0, resumed=Horizon(IPE).state_dict())
    with pytest.raises(ConfigError, match="planned over 468 steps, this config has 936"):
        build_horizon(OptimizationConfig(epochs=2), IPE, t_start=0.0, resumed=Horizon(IPE).state_dict())
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="is not a horizon record"):
        build_horizon(OptimizationConfig(epochs=1, replay=str(tmp_path / "bad.json")), IPE, t_start=0.0)


def test_no_step_fits_ends_the_run_at_its_first_plan():
    h, steps, _ = simulate(0.3, lambda t: 5.0)
    assert steps <= 4 and h.record[-1] == Replan(h.record[-1].step, steps, h.record[-1].step_seconds,
                                                   h.record[-1].seconds_left)


# ------------------------------------------------------------------------------------- through the training loop


class PerReading:
    """A clock that moves ``cost(t)`` seconds at every reading: the loop reads it about once a step, so a timed run
    plans the same steps on any machine, however busy."""

    def __init__(self, cost):
        self.t, self.cost = 0.0, cost

    def __call__(self) -> float:
        self.t += self.cost(self.t)
        return self.t


def lrs(run: Path) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


def test_a_timed_run_is_annealed_recorded_and_ends_within_its_minutes(tmp_path):
    cfg = cfg_with("optimization.epochs=10", "optimization.minutes=0.5", "logging.online_knn=false")
    summary = train(cfg, tmp_path, clock=PerReading(lambda t: 0.25))
    record = json.loads((tmp_path / "horizon.json").read_text())
    assert record["kind"] == "timed" and record["nominal"] == 160
    assert summary["steps"] == summary["planned_steps"] == record["total"] < 160
    assert summary["wall_minutes"] <= 0.5  # on the scripted clock
    assert load_checkpoint(tmp_path / "jepa-latest.pth.tar")["horizon"]["record"] == record["record"]
    assert lrs(tmp_path)[-1] < 0.05 * max(lrs(tmp_path))  # annealed to the last step, not truncated
    # the check the plan reserves for, timed beside the steps once they ran at full speed
    assert 0 < [int(r["step"]) for r in csv.DictReader(open(tmp_path / "monitor.csv"))][0] < summary["steps"]


def test_a_slow_start_through_the_loop_keeps_most_of_the_steps(tmp_path):
    cfg = cfg_with("optimization.epochs=10", "optimization.minutes=0.5", "logging.online_knn=false")
    quiet = train(cfg, tmp_path / "quiet", clock=PerReading(lambda t: 0.25))["steps"]
    # 6x slower steps for the first tenth of the minutes, as a busy neighbour at start-up makes them
    busy = train(cfg, tmp_path / "busy", clock=PerReading(lambda t: 1.5 if t < 3 else 0.25))
    assert busy["steps"] >= 0.85 * quiet and busy["wall_minutes"] <= 0.5 * 1.03


def test_a_limit_the_run_fits_changes_nothing_bit_for_bit(tmp_path):
    plain = train(cfg_with("logging.online_knn=false"), tmp_path / "plain")
    timed = train(cfg_with("logging.online_knn=false", "optimization.minutes=5"), tmp_path / "timed",
                  clock=PerReading(lambda t: 0.25))
    assert plain["steps"] == timed["steps"] == 32
    a = load_checkpoint(tmp_path / "plain" / "jepa-latest.pth.tar")
    b = load_checkpoint(tmp_path / "timed" / "jepa-latest.pth.tar")
    for part in ("encoder", "predictor", "target_encoder"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert lrs(tmp_path / "plain") == lrs(tmp_path / "timed")


@pytest.mark.slow
def test_a_timed_run_killed_resumes_its_plan_and_its_record_replays_it(tmp_path, prewarmed):
    run = tmp_path / "run"
    # every step logged: the last row is the last step however few the time left (a busy machine) lets it train
    args = [*TINY, "optimization.epochs=100", "logging.online_knn=false", "logging.checkpoint_every_steps=5",
            "meta.threads=1", "logging.log_freq=1"]
    cmd = ["train", "--config", "fmnist_cpu", "--out", str(run), "--minutes", "0.15", *args]
    with open(tmp_path / "first.out", "w") as out:
        proc = prewarmed.ijepa(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (run / "jepa-latest.pth.tar").exists() or load_checkpoint(run / "jepa-latest.pth.tar")["step"] < 10:
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.out").read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load_checkpoint(run / "jepa-latest.pth.tar")["horizon"]
    with open(tmp_path / "second.out", "w") as out:
        done = prewarmed.ijepa(cmd, stdout=out, stderr=subprocess.STDOUT)
    assert done.wait(timeout=300) == 0, (tmp_path / "second.out").read_text()
    assert "resumed from" in (tmp_path / "second.out").read_text()
    record = json.loads((run / "horizon.json").read_text())
    assert record["record"][: len(killed["record"])] == killed["record"]  # the plan so far, continued
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == record["total"] and lrs(run)[-1] < 0.05 * max(lrs(run))
    # the recorded plan replays the run: same steps, same schedules, the same weights (on one thread, as it ran)
    threads = torch.get_num_threads()
    replay = train(cfg_with("optimization.epochs=100", "logging.online_knn=false", "meta.threads=1",
                            f"optimization.replay={run / 'horizon.json'}"), tmp_path / "replay")
    torch.set_num_threads(threads)
    assert replay["steps"] == summary["steps"]
    a, b = load_checkpoint(run / "jepa-latest.pth.tar"), load_checkpoint(tmp_path / "replay" / "jepa-latest.pth.tar")
    for part in ("encoder", "predictor", "target_encoder"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], atol=1e-6, rtol=0)


def _timed_rank(rank: int, world: int, init_file: str, out_dir: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = cfg_with("optimization.epochs=10", "optimization.minutes=0.5", "logging.online_knn=false")
    cost = 0.25 if rank == 0 else 0.4  # rank 1 is the slower machine
    summary = train(cfg, Path(out_dir) / "run", clock=PerReading(lambda t: cost))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(summary))


@pytest.mark.slow
def test_ranks_plan_together_from_the_slowest_rank(tmp_path):
    # every re-plan is a collective: ranks that planned different steps would hang or part ways
    torch.multiprocessing.spawn(_timed_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    s0, s1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    alone = train(cfg_with("optimization.epochs=10", "optimization.minutes=0.5", "logging.online_knn=false",
                           "data.batch_size=32"),  # the two ranks' global batch: the same steps per epoch
                  tmp_path / "alone", clock=PerReading(lambda t: 0.4))
    assert s0["steps"] == s1["steps"] == s0["planned_steps"]
    assert abs(s0["steps"] - alone["steps"]) <= 3  # the slower rank's pace, not the faster one's
