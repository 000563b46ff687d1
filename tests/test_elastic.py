"""Surviving faults: torchrun brings a job back by itself after a worker is killed, and checkpoints come due by time.

- A worker killed with SIGKILL mid-epoch under ``torchrun --max-restarts 1``: the agent restarts the worker group,
  the new group joins (train/distributed.py's fresh store prefix: the agent's store still holds the dead group's
  keys), resumes from the latest checkpoint and ends with the weights of an uninterrupted run.
- ``logging.checkpoint_every_minutes`` on a scripted clock (each step takes 30 "seconds"): which steps are saved,
  by which thread; under DDP rank 0's clock decides for every rank.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import TINY, cfg_with

from ijepa.train import checkpoint as C
from ijepa.train import distributed as D
from ijepa.train import loop
from ijepa.train.checkpoint import load_checkpoint
from ijepa.train.checkpoint_writer import BackgroundWriter, CheckpointTimer
from ijepa.train.runfolder import own_run_folder

# torchrun runs this instead of `python -m ijepa`: the same command, except that on the first attempt (torchrun's
# TORCHELASTIC_RESTART_COUNT) the rank IJEPA_KILL_RANK kills itself with SIGKILL before step IJEPA_KILL_STEP.
KILLER = """
import os, signal, sys
from ijepa.cli import main
from ijepa.train import loop
step_fn = loop.train_step
def train_step(state, images, enc, pred, step):
    if (os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.environ["RANK"] == os.environ["IJEPA_KILL_RANK"]
            and step == int(os.environ["IJEPA_KILL_STEP"])):
        os.kill(os.getpid(), signal.SIGKILL)
    return step_fn(state, images, enc, pred, step)
loop.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""

# 256 images, 8 per rank and step: 16 steps an epoch, 32 in all; latest every 4 steps
ARGS = [*TINY, "data.batch_size=8", "meta.threads=1", "logging.online_knn=false", "logging.checkpoint_every_steps=4",
        "logging.checkpoint_freq=0"]


def torchrun(script: Path, run: Path, log: Path, max_restarts: int, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(max_restarts), "--monitor-interval", "0.2", str(script),
           "train", "--config", "fmnist_cpu", "--out", str(run), *ARGS]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(tmp_path):
    script = tmp_path / "train_killer.py"
    script.write_text(KILLER)
    # rank 0 (it holds the run folder's lock and writes the checkpoints) dies at step 22 of 32: resumes from 20
    killed = torchrun(script, tmp_path / "killed", tmp_path / "killed.out", 1,
                      {"IJEPA_KILL_RANK": "0", "IJEPA_KILL_STEP": "22"})
    whole = torchrun(script, tmp_path / "whole", tmp_path / "whole.out", 0,
                     {"IJEPA_KILL_RANK": "-1", "IJEPA_KILL_STEP": "-1"})
    assert killed.wait(timeout=240) == 0, (tmp_path / "killed.out").read_text()[-4000:]
    assert whole.wait(timeout=240) == 0, (tmp_path / "whole.out").read_text()[-4000:]
    out = (tmp_path / "killed.out").read_text()
    assert "resumed from" in out and "at step 20" in out, out[-4000:]
    a, b = load_checkpoint(tmp_path / "killed" / "jepa-latest.pth.tar"), load_checkpoint(
        tmp_path / "whole" / "jepa-latest.pth.tar")
    assert a["step"] == b["step"] == 32
    for part in ("encoder", "predictor", "target_encoder"):
        for k, v in b[part].items():
            assert torch.allclose(a[part][k], v, atol=1e-6, rtol=0), (part, k)
    with open(tmp_path / "killed" / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(32))  # each step logged once, in order


# A run that holds its folder forks a child that lives on (as a loader worker does), then is killed.
HOLDER = """
import os, signal, sys, time
from pathlib import Path
import torch
from ijepa.train.distributed import DistInfo
from ijepa.train.runfolder import own_run_folder
with own_run_folder(Path(sys.argv[1]), DistInfo(), torch.device("cpu")):
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    Path(sys.argv[2]).write_text(str(child))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_forked_children_do_not_keep_its_folder(tmp_path):
    """A flock belongs to every copy of its descriptor: a loader worker that outlives its killed run would keep the
    folder from the run torchrun restarts at once, unless forked children drop their copies."""
    run, pid = tmp_path / "run", tmp_path / "child.pid"
    with open(tmp_path / "holder.err", "w") as err:  # not a pipe: the child would keep it open
        r = subprocess.run([sys.executable, "-c", HOLDER, str(run), str(pid)], stdout=err, stderr=err, timeout=60)
    assert r.returncode == -signal.SIGKILL, (tmp_path / "holder.err").read_text()
    child = int(pid.read_text())
    try:
        os.kill(child, 0)  # still alive: the folder must be free anyway
        with own_run_folder(run, D.DistInfo(), torch.device("cpu")):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ by time


def test_checkpoints_come_due_by_time_and_are_written_in_the_background(tmp_path, monkeypatch):
    now = [0.0]
    step_fn = loop.train_step

    def step_of_30_seconds(*a):
        now[0] += 30.0
        return step_fn(*a)

    writes = []
    write = C.Checkpointer._write

    def record(self, state, paths):
        writes.append((state["step"], threading.current_thread().name))
        write(self, state, paths)

    monkeypatch.setattr(loop, "train_step", step_of_30_seconds)
    monkeypatch.setattr(C.Checkpointer, "_write", record)
    # 16 steps an epoch, 32 in all; asked every 3 steps whether 2 minutes have passed since the last checkpoint
    summary = loop.train(cfg_with("logging.checkpoint_every_minutes=2", "logging.log_freq=3",
                                  "logging.online_knn=false"), tmp_path, clock=lambda: now[0])
    assert summary["steps"] == 32
    # 6 (180 s), 12 (360 s), the epoch's end at 16 (480 s) restarts the clock: 21 (630 s), 27 (810 s); the end
    assert [s for s, _ in writes] == [6, 12, 16, 21, 27, 32]
    threads = {s: name for s, name in writes}
    assert {threads[s] for s in (6, 12, 21, 27)} == {"ijepa-checkpoint-writer"}
    assert threads[16] == threads[32] == threading.main_thread().name
    assert load_checkpoint(tmp_path / "jepa-latest.pth.tar")["step"] == 32


def test_off_by_default_and_never_asks():
    asked = []
    timer = CheckpointTimer(0, lambda: 1e9, agree=lambda due: asked.append(due) or due)
    assert not timer.due() and asked == []


def test_a_failed_background_write_is_raised_on_the_training_thread():
    writer = BackgroundWriter()

    def fail():
        raise OSError(28, "No space left on device")

    writer.submit(fail)
    with pytest.raises(OSError, match="No space"):
        writer.wait()
    writer.wait()  # raised once


def _timer_worker(rank: int, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    # rank 0's clock reaches a minute at the 3rd ask, rank 1's at the 1st: every rank follows rank 0
    times = iter([0.0, 20.0, 40.0, 60.0, 70.0, 80.0] if rank == 0 else [0.0, 100.0, 200.0, 300.0, 400.0, 500.0])
    timer = CheckpointTimer(1, lambda: next(times), agree=lambda due: D.from_main(due, torch.device("cpu")))
    answers = [timer.due() for _ in range(3)]
    timer.reset()
    answers.append(timer.due())
    torch.save(answers, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_under_ddp_rank_0s_clock_decides_for_every_rank(tmp_path):
    # forked, not spawned: the workers need nothing but torch, and skip re-importing it
    torch.multiprocessing.start_processes(_timer_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                                          start_method="fork")
    answers = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert answers[0] == answers[1] == [False, False, True, False]
