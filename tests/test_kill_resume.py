"""kill -9 at any moment, then the same command again: the run ends as if it had never been interrupted.

A small fp32 CPU run is killed with SIGKILL several times at seeded-random moments of three kinds — while a
checkpoint is being written (a temporary file exists), during a resumed start-up (after the checkpoint is read,
before the first new step is logged), and between steps — and restarted with the same command each time. Every
restart must succeed; at the end the weights equal an uninterrupted run's and log.csv holds each step once.
"""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from ijepa.train.checkpoint import load_checkpoint

STEPS_PER_EPOCH, EPOCHS = 20, 2
ARGS = [f"data.limit={8 * STEPS_PER_EPOCH}", "data.batch_size=8", "data.crop_size=28", "meta.model_name=vit_tiny",
        "meta.enc_depth=1", "meta.pred_depth=1", "meta.pred_emb_dim=48", "meta.precision=fp32",
        "meta.threads=1", "meta.drop_path=0.1", f"optimization.epochs={EPOCHS}", "optimization.warmup=0.5",
        "logging.progress=false", "logging.log_freq=5", "logging.checkpoint_every_steps=3",
        "logging.checkpoint_freq=1", "logging.monitor_freq=10", "logging.online_knn=false"]
PLAN = ["step", "checkpoint write", "start-up", "checkpoint write", "step", "start-up", "checkpoint write"]


def start(prewarmed, run: Path, log: Path):
    with open(log, "w") as out:
        return prewarmed.ijepa(["train", "--out", str(run), *ARGS], stdout=out, stderr=subprocess.STDOUT)


def logged_steps(run: Path) -> list[int]:
    path = run / "log.csv"
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().splitlines(keepends=True) if ln.endswith("\n")]
    return [int(r["step"]) for r in csv.DictReader(lines)] if lines else []


def temp_files(run: Path, pattern: str = ".*.tmp") -> list[str]:
    return sorted(p.name for p in run.glob(pattern)) if run.exists() else []


def wait_for(proc, out: Path, condition, timeout: float = 120.0) -> bool:
    """Poll every millisecond until ``condition()``; False when the run ended by itself first."""
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            assert proc.returncode == 0, out.read_text()
            return False
        assert time.time() < deadline, "timed out waiting to kill\n" + out.read_text()
        time.sleep(0.001)
    return True


def kill_once(prewarmed, kind: str, run: Path, out: Path, rng: random.Random) -> dict | None:
    """Start the run, kill it as ``kind`` says; returns where the kill landed (None: it finished first)."""
    stale = set(temp_files(run))  # what an earlier kill left mid-write (the next start removes it)
    before = logged_steps(run)
    proc = start(prewarmed, run, out)
    if kind == "checkpoint write":
        # let a seeded number of writes pass, so kills land on different checkpoints (latest, the epoch copies)
        target, seen = rng.randint(1, 3), set()

        def writing() -> bool:
            now = set(temp_files(run, ".jepa-*.pth.tar.*.tmp")) - stale
            seen.update(now)
            return len(seen) >= target and bool(now)
        ok = wait_for(proc, out, writing)
    elif kind == "start-up":
        ok = wait_for(proc, out, lambda: "resumed from" in out.read_text())
        time.sleep(rng.uniform(0.0, 0.05))
    else:
        more = rng.randint(1, 6)
        ok = wait_for(proc, out, lambda: len(logged_steps(run)) >= len(before) + more)
        time.sleep(rng.uniform(0.0, 0.1))
    if not ok or proc.poll() is not None:
        assert proc.returncode in (None, 0), out.read_text()
        return None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed, after = _resumed_step(out), logged_steps(run)
    torn = sorted(set(temp_files(run)) - stale)
    if any(".pth.tar." in t for t in torn):
        phase = "checkpoint write"
    elif after in (before, [s for s in before if s < (resumed or 0)]):  # killed before or after the logs' repair
        phase = "start-up"
    else:
        phase = "log write" if torn else "between steps"
    return {"plan": kind, "landed": phase, "resumed_at": resumed, "last_logged_step": after[-1] if after else None,
            "torn": torn}


def _resumed_step(out: Path) -> int | None:
    for line in out.read_text().splitlines():
        if line.startswith("resumed from"):
            return int(line.split(" at step ")[1].split()[0])
    return None


def max_weight_diff(a: Path, b: Path) -> float:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    return max((ca[part][k] - cb[part][k]).abs().max().item()
               for part in ("encoder", "predictor", "target_encoder") for k in ca[part])


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_exactly(tmp_path, prewarmed):
    ref, run = tmp_path / "ref", tmp_path / "run"
    reference = start(prewarmed, ref, tmp_path / "ref.out")  # the uninterrupted run, alongside
    rng = random.Random(20)
    kills = []
    for i, kind in enumerate(PLAN):
        landed = kill_once(prewarmed, kind, run, tmp_path / f"kill{i}.out", rng)
        if landed is None:
            break
        kills.append(landed)
    final = start(prewarmed, run, tmp_path / "final.out")
    assert final.wait(timeout=300) == 0, (tmp_path / "final.out").read_text()
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.out").read_text()

    total = STEPS_PER_EPOCH * EPOCHS
    assert logged_steps(run) == list(range(total))  # each step exactly once, in order
    with open(run / "log.csv") as f, open(ref / "log.csv") as g:
        a, b = ({int(r["step"]): float(r["loss"]) for r in csv.DictReader(h)} for h in (f, g))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-6
    mon = [int(r["step"]) for r in csv.DictReader(open(run / "monitor.csv"))]
    assert mon == [int(r["step"]) for r in csv.DictReader(open(ref / "monitor.csv"))] == sorted(set(mon))
    diffs = {name: max_weight_diff(run / name, ref / name)
             for name in ("jepa-latest.pth.tar", "jepa-ep1.pth.tar", "jepa-ep2.pth.tar")}
    assert max(diffs.values()) <= 1e-6, diffs
    assert json.loads((run / "summary.json").read_text())["steps"] == total
    assert not temp_files(run)  # what the kills left mid-write was cleaned up at the next start

    assert len(kills) >= 5, kills
    assert {"checkpoint write", "start-up"} <= {k["landed"] for k in kills}, kills
    report = {"kills": len(kills), "landed": kills, "max_abs_weight_diff": max(diffs.values())}
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2))
    print("\nSIGKILL test:", json.dumps(report))
    torch.testing.assert_close(torch.tensor(max(diffs.values())), torch.tensor(0.0), atol=1e-6, rtol=0)
