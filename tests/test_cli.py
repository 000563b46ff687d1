import argparse
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY

from ijepa.cli import build_parser, main


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "config", "eval", "extract", "convert", "models"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--config" in out and "--out" in out and "key=value" in out and "ijepa config --keys" in out


def test_building_the_parser_imports_no_torch():
    # `ijepa --help` and `ijepa COMMAND --help` stay quick: each command's code is imported only when it runs
    code = "import sys, ijepa.cli; ijepa.cli.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def _runs(parser: argparse.ArgumentParser, name: str = "ijepa") -> dict[str, str | None]:
    """Every command and sub-command of ``parser`` with the function that runs it."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found[f"{name} {sub_name}"] = sub.get_default("run")
                found.update(_runs(sub, f"{name} {sub_name}"))
    return found


def test_every_command_names_a_function_that_exists():
    runs = _runs(build_parser())
    assert runs.pop("ijepa viz") is None  # alone, it prints its help
    assert {"ijepa train", "ijepa eval", "ijepa shards", "ijepa viz predict", "ijepa train-decoder"} <= set(runs)
    for command, target in runs.items():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name)), command


def test_a_command_without_its_sub_command_prints_help(capsys):
    assert main(["viz"]) == 0
    assert "PICTURE" in capsys.readouterr().out
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "ijepa", "config", "--list"], capture_output=True, text=True)
    assert r.returncode == 0 and "fmnist_cpu" in r.stdout and "in1k_vith14_ep300" in r.stdout


def test_config_error_is_one_line_and_nothing_starts(tmp_path, capsys):
    # --config: the default rung depends on the machine (this must hold on an AVX2-only CI runner too)
    assert main(["train", "--config", "fmnist_cpu", "--out", str(tmp_path / "run"), "optimization.lr=-1"]) == 2
    err = capsys.readouterr().err.strip()
    # the value came from the command line, which the message names (not the config file)
    assert err == "ijepa: config error: command line: optimization.lr=-1: must be >= 0, got -1.0"
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing.pth.tar"), "--protocol", "knn"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_any_ijepa_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nothing.pth.tar"
    assert main(["convert", str(missing), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ijepa: checkpoint error: no checkpoint at {missing}: the path does not exist")
    assert len(err.strip().splitlines()) == 1

    import ijepa.interop.commands

    def broken(*args, **kwargs):
        raise KeyError("a bug, not the user's to fix")

    monkeypatch.setattr(ijepa.interop.commands, "convert", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["convert", str(missing), str(tmp_path / "out")])


def test_a_missing_optional_package_is_one_line_naming_its_extra(tmp_path, capsys, monkeypatch):
    import ijepa.interop.commands

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] or ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # imported as if it were not installed

    def draws(*args, **kwargs):
        from matplotlib.figure import Figure  # noqa: F401

    monkeypatch.setattr(ijepa.interop.commands, "convert", draws)
    assert main(["convert", str(tmp_path / "x.pth.tar"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == ("ijepa: missing package: this needs the matplotlib package, which is not installed: "
                   "pip install 'ijepa[viz]'\n")

    def own_module_lost(*args, **kwargs):  # a module of ijepa itself missing is a bug: its traceback stays
        importlib.import_module("ijepa.no_such_module")

    monkeypatch.setattr(ijepa.interop.commands, "convert", own_module_lost)
    with pytest.raises(ModuleNotFoundError):
        main(["convert", str(tmp_path / "x.pth.tar"), str(tmp_path / "out")])


def test_output_into_a_closed_pipe_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader has gone (`ijepa config | head` once head has its lines)
    try:
        r = subprocess.run([sys.executable, "-m", "ijepa", "config", "--keys"], stdout=write, stderr=subprocess.PIPE,
                           text=True)
    finally:
        os.close(write)
    assert r.returncode == 141  # 128 + SIGPIPE, as a shell tool ends
    assert r.stderr == ""  # no traceback, no "Exception ignored" at exit


@pytest.mark.slow
def test_train_then_eval_extract_and_convert(tmp_path, capsys):
    run = tmp_path / "run"
    # one epoch of 8 steps: eval, extract and convert need a trained run, not a good one
    assert main(["train", "--out", str(run), *TINY, "data.batch_size=32", "optimization.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--protocol", "linear,knn", "--limit", "300", "--no-progress",
                 "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    for name in ("pretrained", "random", "pixels"):
        assert name in out
    res = json.loads((tmp_path / "e.json").read_text())
    assert set(res["models"]) == {"pretrained", "random", "pixels"}
    assert 0.1 < res["models"]["pixels"]["knn"]["accuracy"] <= 1.0
    assert main(["extract", str(run), "--limit", "50", "--out", str(tmp_path / "f.npy")]) == 0
    import numpy as np
    assert np.load(tmp_path / "f.npy").shape == (50, 192)
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to", "hf"]) == 0
    from transformers import IJepaModel

    import ijepa
    hf = IJepaModel.from_pretrained(tmp_path / "hf").eval()
    ours = ijepa.load(str(run))
    size = ours.input_spec["image_size"]  # the training crop (the default's 36 px), which the HF config carries
    assert hf.config.image_size == size[0]
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        assert torch.allclose(hf(pixel_values=x).last_hidden_state, ours(x), atol=1e-5)
