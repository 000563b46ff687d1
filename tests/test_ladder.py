"""The CPU default's ladder: the rung `ijepa train` picks with no --config, on mocked capabilities, and the rungs'
configs themselves."""

import json

import pytest

import ijepa.device
import ijepa.train.loop
from ijepa.cli import main
from ijepa.config import load_config
from ijepa.errors import RecipeTooSlowError
from ijepa.ladder import LADDER, choose_rung, describe_ladder


@pytest.mark.parametrize("native, expected", [(True, "fmnist_cpu"), (False, "fmnist_cpu_fp32")])
def test_the_rung_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(ijepa.device, "bf16_supported", lambda device: native)
    rung, why = choose_rung("cpu")
    assert rung.config == expected
    assert ("no native" in why) == (not native)
    if not native:  # the reason is measured, in numbers
        assert "GFLOP/s" in why


def test_every_rung_is_a_valid_shipped_config_and_the_fp32_rung_runs_fp32():
    cfgs = {r.config: load_config(r.config) for r in LADDER}
    assert cfgs["fmnist_cpu"].meta.use_bfloat16
    assert not cfgs["fmnist_cpu_fp32"].meta.use_bfloat16
    assert cfgs["fmnist_cpu_fp32"].data.crop_size == 28
    for cfg in cfgs.values():  # each rung caps its training so the quick start ends in time on a slow machine
        assert cfg.optimization.max_minutes is not None and cfg.optimization.max_minutes <= 10
    for r in LADDER:
        assert r.config in describe_ladder()


def test_train_without_config_says_which_rung_and_why(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ijepa.device, "bf16_supported", lambda device: False)
    seen = {}

    def fake_train(cfg, out, min_fit=None):
        seen["model"], seen["bf16"], seen["out"] = cfg.meta.model_name, cfg.meta.use_bfloat16, str(out)
        return {"steps": 0}

    monkeypatch.setattr(ijepa.train.loop, "train", fake_train)
    assert main(["train", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "CPU default: fmnist_cpu_fp32, because this cpu has no native units for bf16" in out
    assert seen == {"model": "vit_base", "bf16": False, "out": str(tmp_path / "run")}


def test_a_rung_too_slow_here_steps_down_and_the_run_folder_remembers_the_rung(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ijepa.device, "bf16_supported", lambda device: True)
    tried = []

    def fake_train(cfg, out, min_fit=None):
        tried.append((cfg.data.crop_size, min_fit))
        if min_fit is not None:  # the bf16 rung, on a slow machine
            raise RecipeTooSlowError("at 2.617 s a step measured here, optimization.max_minutes=9 fits about 186 "
                                     "of the 468 configured steps, under the 80% this recipe needs")
        return {"steps": 0}

    monkeypatch.setattr(ijepa.train.loop, "train", fake_train)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "CPU default: fmnist_cpu, because this cpu runs bf16" in out
    assert "CPU default: fmnist_cpu_fp32, because fmnist_cpu was too slow here (at 2.617 s a step" in out
    assert tried == [(36, LADDER[0].min_fit), (28, None)]  # the last rung runs whatever fits
    assert json.loads((run / "rung.json").read_text())["rung"] == "fmnist_cpu_fp32"
    # re-running the command resumes the rung the folder settled on, without measuring the others again
    tried.clear()
    assert main(["train", "--out", str(run)]) == 0
    assert tried == [(28, None)]
    assert "CPU default: fmnist_cpu_fp32, because " in capsys.readouterr().out
