"""Time-budgeted training (optimization.minutes / ijepa train --minutes, the cap optimization.max_minutes) and the
precision policy in pretraining: the budget sets the schedules' horizon, a budgeted run resumes exactly, ranks
agree, a cap leaves a run that fits unchanged, fp16 trains with a scaler."""

import csv
import json
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ijepa.config import load_config
from ijepa.errors import ConfigError, RecipeTooSlowError
from ijepa.train.budget import MAX_DRAWS, plan_steps, time_steps
from ijepa.train.checkpoint import load_checkpoint
from ijepa.train.loop import train
from ijepa.train.schedules import Schedules

TINY = ["data.limit=256", "data.batch_size=16", "meta.model_name=vit_tiny", "meta.enc_depth=1",
        "meta.pred_depth=1", "meta.pred_emb_dim=48", "meta.use_bfloat16=false", "optimization.epochs=2",
        "optimization.warmup=0.5", "logging.progress=false", "logging.log_freq=4", "loss.var_weight=0",
        "loss.cov_weight=0", "logging.online_knn=false", "optimization.max_minutes=null"]


def cfg_with(*extra):
    return load_config(None, TINY + list(extra))


def lrs(run: Path) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


def test_a_plan_fits_the_steps_and_the_epoch_checks_in_the_budget():
    p = plan_steps(1.0, step_seconds=0.5, check_seconds=2.0, setup_seconds=5.0, steps_per_epoch=10)
    used = p.total_steps * 0.5 + (p.total_steps // 10) * 2.0 + 2.0 + 5.0
    assert used <= 60 * 0.97 and used + 0.5 + 2.0 > 60 * 0.97 - 2.0  # full, without running over
    with pytest.raises(ConfigError, match=r"optimization.minutes=0.05 leaves no time for one training step .* at "
                                          r"least 0.1\d minutes"):
        plan_steps(0.05, step_seconds=1.0, check_seconds=2.0, setup_seconds=3.0, steps_per_epoch=10)


def test_total_steps_is_the_schedules_horizon():
    cfg = cfg_with("optimization.total_steps=40")
    s = Schedules.from_config(cfg.optimization, steps_per_epoch=16, total_steps=40)
    assert s.total_steps == 40 and s.warmup_steps == 10  # warmup 0.5 of 2 epochs: a quarter of the run
    assert s.lr_at(40) == pytest.approx(cfg.optimization.final_lr) and s.momentum_at(40) == cfg.optimization.ema[1]


def test_a_budgeted_run_is_annealed_recorded_and_within_its_minutes(tmp_path):
    t0 = time.perf_counter()
    summary = train(cfg_with("optimization.minutes=0.3"), tmp_path)
    wall = time.perf_counter() - t0
    plan = json.loads((tmp_path / "budget.json").read_text())
    n = plan["total_steps"]
    assert summary["steps"] == summary["planned_steps"] == n > 16  # more than one epoch of 16 steps fits
    assert wall <= 0.3 * 60 * 1.25, (wall, plan)  # what the budget is for (a loose bound: shared CI machines)
    assert load_checkpoint(tmp_path / "jepa-latest.pth.tar")["total_steps"] == n
    assert f"total_steps: {n}" in (tmp_path / "config.yaml").read_text()
    s = Schedules.from_config(cfg_with().optimization, 16, n)
    assert lrs(tmp_path)[-1] == pytest.approx(s.lr_at(n - 1), rel=1e-3)  # annealed to the end, not truncated
    assert lrs(tmp_path)[-1] < 0.05 * max(lrs(tmp_path))


def test_a_budgeted_run_resumes_exactly_and_its_step_count_reproduces_it(tmp_path):
    budgeted = train(cfg_with("optimization.minutes=0.25"), tmp_path / "a")
    n = budgeted["steps"]
    # the same run from its recorded step count, stopped part-way, then re-run with the budget command: the
    # checkpoint's step count is kept (nothing is measured again) and the run ends where the budgeted one did
    train(cfg_with(f"optimization.total_steps={n}", f"optimization.max_steps={n // 2}"), tmp_path / "b")
    resumed = train(cfg_with("optimization.minutes=0.25"), tmp_path / "b")
    assert resumed["steps"] == n and not (tmp_path / "b" / "budget.json").exists()
    a = load_checkpoint(tmp_path / "a" / "jepa-latest.pth.tar")
    b = load_checkpoint(tmp_path / "b" / "jepa-latest.pth.tar")
    for part in ("encoder", "predictor", "target_encoder"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="planned with"):
        train(cfg_with(f"optimization.total_steps={n + 1}"), tmp_path / "b")


def test_a_budget_too_small_for_one_step_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="^optimization.minutes=0.001 leaves no time for one training step"):
        train(cfg_with("optimization.minutes=0.001"), tmp_path)
    # a cap names its own key: the user set max_minutes, not minutes
    with pytest.raises(ConfigError, match="^optimization.max_minutes=0.001 leaves no time for one training step"):
        train(cfg_with("optimization.max_minutes=0.001"), tmp_path)


def test_a_cap_the_epochs_fit_leaves_the_run_unchanged_bit_for_bit(tmp_path):
    # the CPU default's rungs carry a cap: on a machine fast enough for their epochs it must change nothing
    plain = train(cfg_with(), tmp_path / "plain")
    capped = train(cfg_with("optimization.max_minutes=5"), tmp_path / "capped")
    plan = json.loads((tmp_path / "capped" / "budget.json").read_text())
    assert plan["capped"] is False and plan["total_steps"] == capped["steps"] == plain["steps"] == 32
    assert capped["planned_steps"] is None and "total_steps: null" in (tmp_path / "capped" / "config.yaml").read_text()
    a = load_checkpoint(tmp_path / "plain" / "jepa-latest.pth.tar")
    b = load_checkpoint(tmp_path / "capped" / "jepa-latest.pth.tar")
    for part in ("encoder", "predictor", "target_encoder"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert lrs(tmp_path / "plain") == lrs(tmp_path / "capped")


def test_a_cap_that_binds_anneals_the_steps_that_fit(tmp_path):
    summary = train(cfg_with("optimization.epochs=400", "optimization.max_minutes=0.25"), tmp_path)
    plan = json.loads((tmp_path / "budget.json").read_text())
    n = plan["total_steps"]
    assert plan["capped"] is True and summary["steps"] == summary["planned_steps"] == n < 400 * 16
    assert load_checkpoint(tmp_path / "jepa-latest.pth.tar")["total_steps"] == n
    assert lrs(tmp_path)[-1] < 0.05 * max(lrs(tmp_path))  # annealed to the end, not truncated


def test_a_budget_replaces_the_rungs_cap(tmp_path):
    # the CPU default carries a cap; `ijepa train --minutes M` on it must plan M minutes, not keep the epochs
    summary = train(cfg_with("optimization.max_minutes=5", "optimization.minutes=0.2"), tmp_path)
    plan = json.loads((tmp_path / "budget.json").read_text())
    assert plan["capped"] is True and plan["minutes"] == 0.2 and summary["steps"] == plan["total_steps"] != 32


def test_the_timing_runs_each_mask_draw_twice_and_times_the_second_run():
    calls = []

    def step(draw):  # a draw's first run is slow, as a new sequence length's kernels are on AMX CPUs
        time.sleep(0.01 if draw in calls else 0.04)
        calls.append(draw)

    seconds = time_steps(step, {}, torch.device("cpu"))
    assert calls == [0, 0, 1, 1] and 0.009 < seconds < 0.03  # no budget: the fewest draws
    calls.clear()
    time_steps(step, {}, torch.device("cpu"), budget_seconds=1e6)  # a long budget affords the most draws
    assert calls == [d for d in range(MAX_DRAWS) for _ in (0, 1)]


def _rank_timing(rank: int, world: int, init_file: str, out_dir: str):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    calls = []

    def step(draw):
        time.sleep(0.02 * (rank + 1))
        calls.append(draw)

    # alone, 3% of 20 s would buy rank 0 about 15 draws of 2 x 20 ms and rank 1 about 7 of 2 x 40 ms
    seconds = time_steps(step, {}, torch.device("cpu"), budget_seconds=20.0)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps([seconds, len(calls)]))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_the_slowest_step_time_and_the_number_of_timed_steps(tmp_path):
    # under DDP every throwaway step is a collective: ranks that ran different numbers of them would hang
    mp.spawn(_rank_timing, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    (t0, n0), (t1, n1) = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert t0 == t1 and 0.035 < t0 < 0.2  # both take rank 1's 40 ms, so both plan the same step count
    assert n0 == n1 < 2 * 12


def test_fp16_pretraining_scales_the_loss_and_resumes_its_scaler(tmp_path):
    cfg = load_config(None, [t for t in TINY if "use_bfloat16" not in t] + ["meta.precision=fp16",
                                                                           "optimization.max_steps=3"])
    with pytest.warns(RuntimeWarning, match="fp16 was asked for"):  # a CPU has no native fp16 units
        summary = train(cfg, tmp_path)
    assert summary["precision"].startswith("fp16") and summary["steps"] == 3
    ckpt = load_checkpoint(tmp_path / "jepa-latest.pth.tar")
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in ckpt["encoder"].values())


def test_use_bfloat16_false_is_the_references_way_of_saying_fp32():
    assert load_config(None, ["meta.use_bfloat16=false"]).meta.precision_request == "fp32"
    assert load_config(None, []).meta.precision_request == "auto"
    with pytest.raises(ConfigError, match="contradicts meta.precision=bf16"):
        load_config(None, ["meta.use_bfloat16=false", "meta.precision=bf16"])


def test_a_cap_too_short_for_min_fit_stops_at_start_up_before_writing_anything(tmp_path):
    # the CPU default's ladder steps down on this: the run folder must be left as it was, ready for the next rung
    with pytest.raises(RecipeTooSlowError, match=r"s a step measured here, optimization.max_minutes=0.001 fits "
                                                 r"about \d+ of the 32 configured steps, under the 50%"):
        train(cfg_with("optimization.max_minutes=0.001"), tmp_path / "run", min_fit=0.5)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    # a cap that fits the share trains as a cap does
    assert train(cfg_with("optimization.max_minutes=0.5"), tmp_path / "fits", min_fit=0.5)["steps"] >= 16
