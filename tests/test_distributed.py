"""train/distributed.py: which launches join a process group."""

import pytest

from ijepa.train import distributed as D

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_a_plain_process_runs_alone(clean_env):
    info = D.detect()
    assert not info.enabled and info.world_size == 1 and info.is_main


def test_torchrun_with_one_process_still_joins_a_group(clean_env):
    """``torchrun --nproc_per_node 1`` runs the DDP path (nccl on one GPU: benchmarks/gpu_check.py's ddp check)."""
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "1")
    clean_env.setenv("LOCAL_RANK", "0")
    info = D.detect()
    assert info.enabled and info.launched and info.world_size == 1


def test_slurm_joins_only_with_several_tasks(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")  # a plain `srun python ...` of one task
    assert not D.detect().enabled
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("SLURM_PROCID", "2")
    info = D.detect()
    assert info.enabled and info.world_size == 4 and info.rank == 2
