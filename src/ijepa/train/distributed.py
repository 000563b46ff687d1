"""Process-group setup for torchrun and SLURM, and the few collectives training needs.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under SLURM (``srun`` one task per GPU)
the same facts come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; MASTER_ADDR must be set by the batch
script (see docs/distributed.md), MASTER_PORT defaults to 29500.

A torchrun that restarts its workers (``--max-restarts``) keeps the store its first workers met in: the agent's,
at the same MASTER_ADDR:MASTER_PORT, still holding the keys the dead group wrote (each rank's address). A new group
that joined through it as is would read those and try to connect to processes that no longer exist. So under
torchrun the ranks meet under a prefix of their own: rank 0 draws a fresh one, and a rank takes a prefix only once
rank 0 has answered it there (``_generation``), so one left by an earlier group is never used.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import IJepaError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun: join a process group even as its only process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether to join a process group and wrap the models in DDP: several processes, or any torchrun launch
        (so ``torchrun --nproc_per_node 1`` runs the DDP path: nccl on one GPU, as benchmarks/gpu_check.py does)."""
        return self.world_size > 1 or self.launched


def detect() -> DistInfo:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), launched=True)
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistInfo()


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched with several processes: nccl on GPU, gloo on CPU."""
    info = detect()
    if not info.enabled or dist.is_initialized():
        return info
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    store = _elastic_store(info)
    if store is None:
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    else:
        dist.init_process_group(backend, store=store, rank=info.rank, world_size=info.world_size)
    return info


# How long a rank waits for rank 0 at start-up: torch's default for joining a process group.
JOIN_TIMEOUT = timedelta(minutes=10)


def _elastic_store(info: DistInfo) -> dist.Store | None:
    """Under torchrun with the agent's store: that store, under this worker group's own prefix. None otherwise
    (SLURM, a plain launch, or a torchrun whose rank 0 serves a fresh store each time: nothing stale there)."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), info.world_size, is_master=False,
                          timeout=JOIN_TIMEOUT)
    return dist.PrefixStore(f"ijepa/{_generation(store, info)}", store)


def _generation(store: dist.Store, info: DistInfo, timeout: timedelta = JOIN_TIMEOUT) -> str:
    """A name every rank of this worker group agrees on and no earlier group used. Rank 0 draws it and publishes
    it; every other rank writes a fresh token of its own under the name it read and takes the name once rank 0
    has echoed that token. A name left by an earlier group is never echoed (its rank 0 is gone), so a rank that
    read one reads again; rank 0 answers only the tokens written under its own name."""
    key = f"ijepa/generation/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    if info.rank == 0:
        name = secrets.token_hex(8)
        store.set(key, name)
        for r in range(1, info.world_size):
            token = store.get(f"{name}/join/{r}").decode()  # waits for rank r (the store's timeout)
            store.set(f"{name}/welcome/{token}", "1")
        return name
    token, deadline = secrets.token_hex(8), time.monotonic() + timeout.total_seconds()
    while True:
        name = store.get(key).decode()
        store.set(f"{name}/join/{info.rank}", token)
        waited = time.monotonic() + 1.0
        while time.monotonic() < waited:
            if store.check([f"{name}/welcome/{token}"]):
                return name
            time.sleep(0.02)
        if time.monotonic() > deadline:
            raise IJepaError(f"rank {info.rank}: rank 0 of this worker group did not answer within "
                             f"{timeout.total_seconds():.0f} s of joining the process group")


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, every rank together: no rank tears its connections down while another is still
    at work (rank 0 writes the run's last files), which gloo has been seen to answer with an abort at exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def slowest(seconds: float, device: torch.device) -> float:
    """The largest ``seconds`` over all ranks (itself when not distributed): ranks that plan from their own
    timings agree on the slowest's."""
    if not dist.is_initialized():
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def from_main(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (itself when not distributed): ranks that decide by their own clocks
    follow rank 0's."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())
