"""A run folder one can trust: one owner at a time, a changed config noticed on resume, interrupts that save and
say so in the exit status and summary.json, and errors that come before any work, each in one line."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, cfg_with

import ijepa.recipes
from ijepa import masks
from ijepa.cli import main
from ijepa.config import load_config
from ijepa.errors import RunFolderInUseError
from ijepa.mask_geometry import REDRAWS
from ijepa.train.checkpoint import load_checkpoint
from ijepa.train.distributed import DistInfo
from ijepa.train.ijepa import IJEPA
from ijepa.train.loop import Interrupted, Preemption, exit_status, train
from ijepa.train.runfolder import own_run_folder
from ijepa.train.runlog import RunLog

# A run long enough to be stopped while it trains (128 steps an epoch, 50 epochs), on one thread, as a user would
# start it.
LONG = (*TINY, "optimization.epochs=50", "data.limit=2048", "logging.log_freq=1", "logging.online_knn=false",
        "meta.threads=1")


def command(run: Path, *extra: str) -> list[str]:
    return ["train", "--config", "fmnist_cpu", "--out", str(run), *LONG, *extra]


def start(prewarmed, run: Path, log: Path, *extra: str):
    """The run as its own process (Ctrl-C as from a terminal: tests/prewarmed.py), its output in ``log``."""
    with open(log, "w") as out:
        return prewarmed.ijepa(command(run, *extra), stdout=out, stderr=subprocess.STDOUT)


def logged_steps(run: Path) -> list[int]:
    path = run / "log.csv"
    lines = [ln for ln in path.read_text().splitlines(keepends=True) if ln.endswith("\n")] if path.exists() else []
    return [int(r["step"]) for r in csv.DictReader(lines)] if lines else []


def wait_for(proc, log: Path, condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, log.read_text()
        assert time.time() < deadline, "timed out\n" + log.read_text()
        time.sleep(0.05)


def train_main(run: Path, *extra: str) -> int:
    return main(["train", "--config", "fmnist_cpu", "--out", str(run), *TINY, "logging.online_knn=false", *extra])


# ------------------------------------------------------------------------------------------- one owner


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_stops_naming_the_owner(tmp_path, prewarmed):
    run, log = tmp_path / "run", tmp_path / "first.out"
    first = start(prewarmed, run, log)
    wait_for(first, log, lambda: len(logged_steps(run)) >= 2)
    # another config, so that anything the second run wrote would show
    second = start(prewarmed, run, tmp_path / "second.out", "optimization.lr=1e-3", "meta.seed=7")
    assert second.wait(timeout=120) == 1
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130, log.read_text()
    said = [ln for ln in (tmp_path / "second.out").read_text().splitlines() if ln.startswith("ijepa:")]
    assert len(said) == 1 and re.fullmatch(
        rf"ijepa: run folder in use: {re.escape(str(run))} is in use by pid {first.pid} on host "
        rf"{re.escape(socket.gethostname())} since \S+: another `ijepa train` writes there; .*", said[0]), said
    kept = load_config(str(run / "config.yaml"))
    assert (kept.optimization.lr, kept.meta.seed) == (5e-4, 0)  # the first run's
    steps = logged_steps(run)
    assert steps == list(range(len(steps))) and load_checkpoint(run / "jepa-latest.pth.tar")["step"] == len(steps)
    assert not (run / ".lock").exists()  # the first run removed it as it ended


def test_a_lock_left_by_a_dead_run_is_taken_over_and_a_held_one_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 4194304, "host": "gone", "since": "2026-01-01T00:00:00+0000"}))
    summary = train(cfg_with("data.limit=64", "logging.online_knn=false"), run)  # 4 steps an epoch, 2 epochs
    assert "taking over the run folder from pid 4194304 on host gone since 2026-01-01T00:00:00+0000: its lock file " \
           "was there but nothing held the lock" in capsys.readouterr().out
    assert not (run / ".lock").exists()
    assert (summary["steps"], summary["stopped"], summary["complete"]) == (8, None, True)

    before = (run / "jepa-latest.pth.tar").read_bytes()
    with own_run_folder(run, DistInfo(), torch.device("cpu")):  # this process holds it, as another run would
        owner = json.loads((run / ".lock").read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RunFolderInUseError, match=f"{re.escape(str(run))} is in use by pid {os.getpid()} on "):
            train(cfg_with("data.limit=64", "logging.online_knn=false", "optimization.epochs=3"), run)
    assert (run / "jepa-latest.pth.tar").read_bytes() == before
    # under DDP rank 0 alone holds it
    with own_run_folder(tmp_path / "other", DistInfo(rank=1, world_size=2), torch.device("cpu")):
        assert not (tmp_path / "other" / ".lock").exists()


# ------------------------------------------------------------------------------------------- config changes


def test_a_changed_config_is_refused_before_any_step_unless_allowed(tmp_path, capsys):
    run = tmp_path / "run"
    latest = run / "jepa-latest.pth.tar"
    assert train_main(run, "optimization.max_steps=4") == 0
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert train_main(run, "optimization.max_steps=8", "optimization.lr=1e-3", "data.batch_size=8") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ijepa: config changed: {latest} (step 4) was written with other values of keys that change the "
                   "run: data.batch_size 16 -> 8, optimization.lr 0.0005 -> 0.001. Resume with the same values, give "
                   "another --out, or pass --allow-config-change (meta.allow_config_change=true) to go on with the "
                   "new ones (config_changes.jsonl records the change)")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files  # nothing ran, nothing was written

    # keys that do not change what the run computes may change (the in-memory data uses no loader processes);
    # every change is recorded all the same
    assert train_main(run, "data.num_workers=2", "optimization.max_steps=6") == 0
    assert train_main(run, "data.num_workers=2", "optimization.max_steps=8", "optimization.lr=1e-3",
                      "--allow-config-change") == 0
    history = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [(h["step"], h["alters_run"]) for h in history] == [(4, []), (6, ["optimization.lr"])]
    assert history[0]["changes"]["data.num_workers"] == {"old": 0, "new": 2}
    assert history[1]["changes"]["optimization.lr"] == {"old": 0.0005, "new": 0.001}  # the first value is kept
    assert load_config(str(run / "config.yaml")).optimization.lr == 1e-3
    assert load_checkpoint(latest)["config"]["optimization"]["lr"] == 1e-3  # the next resume compares with this
    assert logged_steps(run) == list(range(8))


# ------------------------------------------------------------------------------------------- interrupts


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_the_same_command_resumes(tmp_path, prewarmed):
    run, log = tmp_path / "run", tmp_path / "run.out"
    proc = start(prewarmed, run, log)
    wait_for(proc, log, lambda: len(logged_steps(run)) >= 4)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()
    out = log.read_text()
    assert "ijepa: received SIGINT: stopping after this step with a checkpoint" in out
    said = re.search(r"received SIGINT: saved (\S+) at step (\d+); resume with the same command \(exit status 130\)",
                     out)
    step = int(said.group(2))
    assert said.group(1) == str(run / "jepa-latest.pth.tar") and load_checkpoint(said.group(1))["step"] == step >= 4
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["stopped"], summary["complete"], summary["steps"]) == ("received SIGINT", False, step)
    assert logged_steps(run) == list(range(step))
    # the same command resumes (optimization.max_steps only stops it early, so the config is the run's own)
    done = start(prewarmed, run, tmp_path / "resumed.out", f"optimization.max_steps={step + 3}")
    assert done.wait(timeout=120) == 0, (tmp_path / "resumed.out").read_text()
    assert f"resumed from {run / 'jepa-latest.pth.tar'} at step {step} " in (tmp_path / "resumed.out").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["stopped"], summary["complete"], summary["steps"]) == (None, False, step + 3)
    assert logged_steps(run) == list(range(step + 3))


def test_a_second_signal_stops_at_once_with_the_shells_status(tmp_path, capsys, monkeypatch):
    started = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever started the tests
    try:
        with pytest.raises(Interrupted) as e, Preemption(is_main=False) as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.requested == "received SIGINT"  # the first asks the loop to stop at the step's end
            signal.raise_signal(signal.SIGINT)
        assert isinstance(e.value, KeyboardInterrupt) and e.value.exit_code == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # a signal ignored by whoever started the process (a script's background job: SIGINT) stays ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with Preemption(is_main=False) as stop:
            signal.raise_signal(signal.SIGINT)
        assert stop.requested is None
    finally:
        signal.signal(signal.SIGINT, started)
    statuses = [exit_status({"stopped": s}) for s in (None, "received SIGINT", "received SIGTERM", "received SIGUSR1")]
    assert statuses == [0, 130, 143, 138]

    def stopped_twice(*args):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(ijepa.recipes, "train_command", stopped_twice)
    assert main(["train", "--out", str(tmp_path / "run")]) == 143
    assert capsys.readouterr().err == "ijepa: interrupted: a second SIGTERM while the run was saving\n"


# ------------------------------------------------------------------------------------------- errors before work


def test_impossible_mask_settings_fail_at_load_before_anything_is_built(tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(IJEPA, "from_config", no_model)
    run = tmp_path / "run"
    assert train_main(run, "mask.num_pred_masks=50") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ijepa: config error: command line: mask.num_pred_masks=50: mask.num_pred_masks, ")
    assert "50 target blocks of 4x4" in err and f"after {REDRAWS} re-draws" in err and len(err.splitlines()) == 1
    assert not run.exists()
    assert REDRAWS == masks._MAX_TRIES  # the check counts the sampler's own re-draws


@pytest.mark.parametrize("minutes", ["nan", "inf", "0", "-1"])
def test_a_time_limit_that_is_no_number_of_minutes_is_one_config_line(minutes, tmp_path, capsys):
    assert main(["train", "--config", "fmnist_cpu", "--out", str(tmp_path / "run"), "--minutes", minutes]) == 2
    value = float(minutes)
    assert capsys.readouterr().err == (f"ijepa: config error: command line: optimization.minutes={value}: must be a "
                                       f"positive number of minutes, got {value}\n")


def test_a_bad_value_names_where_it_came_from(tmp_path, capsys):
    assert main(["train", "--config", "fmnist_cpu", "--out", str(tmp_path / "run"), "optimization.lr=-1"]) == 2
    assert capsys.readouterr().err == "ijepa: config error: command line: optimization.lr=-1: must be >= 0, got -1.0\n"
    (tmp_path / "bad.yaml").write_text("data:\n  dataset: fashion_mnist\noptimization:\n  lr: -1\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "ijepa: config error: bad.yaml: optimization.lr must be >= 0, got -1.0\n"


def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    latest = run / "jepa-latest.pth.tar"
    assert train_main(run, "optimization.max_steps=4") == 0
    before = latest.read_bytes()
    capsys.readouterr()

    def full(obj, f):  # torch.save into the temporary file: a part of it, then no space
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full)
        assert train_main(run, "optimization.max_steps=8") == 1
    assert capsys.readouterr().err == (f"ijepa: disk full: no space left on the device writing {latest}: the last "
                                       f"checkpoint, {latest}, is intact; free some space and run the same command "
                                       "again to resume\n")
    assert latest.read_bytes() == before and not list(run.glob(".*.tmp")) and not (run / ".lock").exists()

    def no_room(self, losses):  # the rows of log.csv
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(RunLog, "_write_rows", no_room)
    assert train_main(run, "optimization.max_steps=8") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ijepa: disk full: no space left on the device writing {run / 'log.csv'}: the last ")
    assert latest.read_bytes() == before
