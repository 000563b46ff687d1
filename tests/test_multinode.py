"""Two machines on one: two torchrun agents (``--nnodes 2 --nproc-per-node 1``) meet through the c10d rendezvous
on 127.0.0.1, as two machines would, and their one-process-each group (gloo) takes the training step one process
takes with the same global batch: test_train's two-process check, across agents. And when one agent's worker is
killed, both agents' new workers meet again (an agent counts a restart its own worker's failure caused, not one
another agent's rejoining called for, so the new group's meeting place cannot be named after the count)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import _one_step

TESTS = Path(__file__).resolve().parent

# Each agent's one worker: joins the group the way `ijepa train` does (train/distributed.py), then takes the step
# on its half of the batch; rank 0 saves what it got.
WORKER = f"""
import os, sys
import torch
sys.path.insert(0, {str(TESTS)!r})
from test_train import _one_step
from ijepa.train import distributed as D
torch.set_num_threads(1)
info = D.init_distributed("cpu")
result = _one_step(info.rank, info.world_size)
result["world_size"] = torch.distributed.get_world_size()
if info.rank == 0:
    torch.save(result, sys.argv[1])
D.cleanup()
"""


# Each agent's one worker: a few all-reduces; the first worker to reach the third, on any agent, kills itself once.
FLAKY = """
import os, signal, sys
import torch
from ijepa.train import distributed as D
info = D.init_distributed("cpu")
t = torch.ones(1)
for i in range(5):
    torch.distributed.all_reduce(t)
    if i == 2 and info.rank == 1:
        try:
            os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL))
            os.kill(os.getpid(), signal.SIGKILL)
        except FileExistsError:
            pass
print(f"rank {info.rank}: {t.item():.0f}", flush=True)
D.cleanup()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_agents_of_one_process_each_equal_one_process_with_the_whole_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    finish(agents(script, free_port(), str(tmp_path / "step.pt")))
    ddp = torch.load(tmp_path / "step.pt", weights_only=True)
    assert ddp["world_size"] == 2
    single = _one_step(0, 1)
    assert abs(ddp["loss"] - single["loss"]) < 1e-6
    for part in ("encoder", "predictor", "target"):  # 1e-6: the gradient all-reduce's round-off (test_train)
        for k, v in single[part].items():
            assert torch.allclose(v, ddp[part][k], atol=1e-6, rtol=0), (part, k, (v - ddp[part][k]).abs().max())


def agents(script: Path, port: int, *args: str, restarts: int = 0) -> list[subprocess.Popen]:
    """Two torchrun agents of one worker each, meeting at 127.0.0.1:``port`` as two machines' agents would."""
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job",
                              "--max-restarts", str(restarts), "--monitor-interval", "0.2", str(script), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]


def finish(procs: list[subprocess.Popen], timeout: float = 180) -> list[str]:
    """Each agent's output once all have ended, none left running. A failure shows every agent's output: the
    agent that fails first is often not the one whose worker says why."""
    outs = []
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert all(p.returncode == 0 for p in procs), "\n".join(
        f"--- agent {i}, exit status {p.returncode}:\n{out[-3000:]}" for i, (p, out) in enumerate(zip(procs, outs)))
    return outs


@pytest.mark.slow
def test_after_a_worker_is_killed_both_agents_workers_meet_again(tmp_path):
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    outs = finish(agents(script, free_port(), str(tmp_path / "killed"), restarts=1))
    assert (tmp_path / "killed").exists()  # a worker was killed, and the job came back
    assert sorted(line for out in outs for line in out.splitlines() if line.startswith("rank ")) == \
        ["rank 0: 32", "rank 1: 32"]  # five all-reduces of 1 + 1: both ranks of the new group
