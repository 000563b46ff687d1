"""The CPU default (recipes.py, ladder.py): the rung `ijepa train` plans with no --config, on mocked capabilities
and a scripted step time — the plan never depends on how fast or busy the machine running the tests is."""

import json

import pytest

import ijepa.recipes
from ijepa.cli import main
from ijepa.config import load_config
from ijepa.ladder import LADDER, describe_ladder
from ijepa.recipes import StepTiming, native_rung, plan_cpu_default


@pytest.mark.parametrize("native, expected", [(True, "fmnist_cpu"), (False, "fmnist_cpu_fp32")])
def test_the_rung_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(ijepa.recipes, "bf16_supported", lambda device: native)
    rung, why = native_rung("cpu")
    assert rung.config == expected
    assert ("no native" in why) == (not native)
    if not native:  # the reason is measured, in numbers
        assert "GFLOP/s" in why


def test_every_rung_is_a_valid_shipped_config_and_the_fp32_rung_runs_fp32():
    cfgs = {r.config: load_config(r.config) for r in LADDER}
    assert cfgs["fmnist_cpu"].meta.precision == "auto"
    assert cfgs["fmnist_cpu_fp32"].meta.precision == "fp32"
    assert cfgs["fmnist_cpu_fp32"].data.crop_size == 28
    for cfg in cfgs.values():  # each rung limits its training so the quick start ends in time on a slow machine
        assert cfg.optimization.minutes is not None and cfg.optimization.minutes <= 11
    for r in LADDER:
        assert r.config in describe_ladder()


def timer(seconds, others=0.0):
    calls = []

    def time_rung(cfg):
        calls.append(cfg.data.crop_size)
        return StepTiming(seconds, others)
    return time_rung, calls


@pytest.mark.parametrize("seconds, others, expected, why", [
    (1.0, 0.0, "fmnist_cpu", "this cpu runs bf16"),  # 10.5 minutes fit the 468 steps
    (2.6, 0.0, "fmnist_cpu_fp32", "fmnist_cpu was too slow here (2.60 s a step measured: its 10.5 minutes fit about "
                                  "242 of its 468 steps, under the 80% it needs)"),
    (2.6, 1.9, "fmnist_cpu", "other programs used 1.9 cores while it was timed (2.60 s a step), so the timing "
                             "says nothing of this machine; kept"),
])
def test_the_plan_steps_down_on_a_slow_quiet_machine_only(monkeypatch, tmp_path, capsys, seconds, others, expected,
                                                          why):
    monkeypatch.setattr(ijepa.recipes, "bf16_supported", lambda device: True)
    time_rung, calls = timer(seconds, others)
    cfg, folder = plan_cpu_default(str(tmp_path / "run"), [], timer=time_rung, load=lambda: 0.0)
    assert cfg.logging.folder == str(folder) == str(tmp_path / "run") and calls == [36]
    assert cfg.data.crop_size == load_config(expected).data.crop_size
    assert why in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "rung.json").read_text())["rung"] == expected


def test_a_busy_machine_keeps_its_rung_without_timing_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ijepa.recipes, "bf16_supported", lambda device: True)
    time_rung, calls = timer(2.6)
    cfg, _ = plan_cpu_default(str(tmp_path / "run"), [], timer=time_rung, load=lambda: 1.8)
    assert calls == [] and cfg.data.crop_size == 36
    out = capsys.readouterr().out
    assert "other programs use 1.8 cores, so a timing would say nothing of this machine; kept" in out


def test_a_users_time_limit_does_not_pick_another_rung(monkeypatch, tmp_path):
    # 6 minutes fit 360 of fmnist_cpu's 468 steps at 1 s a step: the rung is judged by its own 10.5 minutes
    monkeypatch.setattr(ijepa.recipes, "bf16_supported", lambda device: True)
    time_rung, _ = timer(1.0)
    cfg, _ = plan_cpu_default(str(tmp_path / "run"), ["optimization.minutes=6"], timer=time_rung, load=lambda: 0.0)
    assert cfg.data.crop_size == 36 and cfg.optimization.minutes == 6


def test_the_run_folder_remembers_its_rung_and_is_not_timed_again(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ijepa.recipes, "bf16_supported", lambda device: True)
    time_rung, calls = timer(2.6)
    plan_cpu_default(str(tmp_path / "run"), [], timer=time_rung, load=lambda: 0.0)
    calls.clear()
    cfg, _ = plan_cpu_default(str(tmp_path / "run"), [], timer=time_rung, load=lambda: 0.0)
    assert calls == [] and cfg.data.crop_size == 28


def test_a_bad_override_fails_before_anything_is_timed(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ijepa.recipes, "time_rung", lambda cfg: pytest.fail("timed before validating"))
    assert main(["train", "--out", str(tmp_path / "run"), "optimization.lr=-1"]) == 2
    assert "optimization.lr" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["data.root_path=/nowhere/fmnist",
                                      "data.dataset=imagefolder data.root_path=/nowhere/photos"])
def test_a_missing_dataset_fails_before_the_hardware_is_asked(monkeypatch, tmp_path, capsys, override):
    monkeypatch.setattr(ijepa.recipes, "native_rung", lambda *a: pytest.fail("probed the CPU before the data"))
    assert main(["train", "--out", str(tmp_path / "run"), *override.split()]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/nowhere/" in err and "does not exist" in err


def test_train_without_config_trains_the_planned_rung(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ijepa.recipes, "bf16_supported", lambda device: False)
    seen = {}

    def fake_train(cfg, out, started=None):
        seen.update(model=cfg.meta.model_name, precision=cfg.meta.precision, out=str(out))
        return {"steps": 0}

    monkeypatch.setattr(ijepa.recipes, "train", fake_train)
    assert main(["train", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "CPU default: fmnist_cpu_fp32, because this cpu has no native units for bf16" in out
    assert seen == {"model": "vit_base", "precision": "fp32", "out": str(tmp_path / "run")}
