"""meta.parallel: fsdp (train/fsdp.py, interop/sharded.py): FSDP2 on the CPU with gloo takes the same steps as DDP;
its sharded checkpoints resume on another number of processes (2 -> 1), convert to the usual single file, and
load with ``ijepa.load``; ``ijepa train`` runs and resumes with it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import cfg_with

from ijepa.cli import main
from ijepa.errors import CheckpointError
from ijepa.interop import load
from ijepa.interop.sharded import convert_sharded, find_sharded, read_sharded
from ijepa.masks import MaskConfig, MultiBlockMaskSampler
from ijepa.precision import Precision
from ijepa.train import distributed as D
from ijepa.train import fsdp as F
from ijepa.train.checkpoint import Checkpointer, load_checkpoint
from ijepa.train.horizon import Horizon
from ijepa.train.ijepa import IJEPA
from ijepa.train.loop import TrainState, train, train_step
from ijepa.train.schedules import Schedules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fsdp_memory  # noqa: E402

SPEC = {"image_size": (28, 28), "in_chans": 1, "mean": (0.5,), "std": (0.5,)}
FP32 = Precision("fp32", "cpu")
STEPS, SAVED_AT, BATCH = 3, 2, 16
# the run's length in steps, not epochs: one process takes twice the steps per epoch that two take
RUN = ("meta.parallel=fsdp", "optimization.total_steps=16", "logging.online_knn=false")


def _cfg(*extra: str):
    return cfg_with("meta.drop_path=0.0", "optimization.clip_grad=1.0", *extra)


def _parts(seed: int = 0, kind: str = "plain", *extra: str):
    cfg = _cfg(*extra)
    torch.manual_seed(seed)
    model = IJEPA.from_config(cfg, SPEC)
    if kind == "fsdp":
        F.shard_model(model, FP32, torch.device("cpu"))
    opt = model.configure_optimizer(cfg.optimization, "cpu")
    sched = Schedules.from_config(cfg.optimization, 10, Horizon(20))
    forward = model
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        forward = DDP(model)
    return cfg, TrainState(model, forward, opt, FP32.grad_scaler(), sched, FP32, cfg.optimization.clip_grad)


def _checkpointer(cls, out: Path, s: TrainState, cfg, world: int, rank: int = 0):
    return cls(out, "jepa", s.model, s.optimizer, s.scaler, s.schedules, steps_per_epoch=10, is_main=rank == 0,
               info={"batch_size": BATCH, "world_size": world, "input_spec": SPEC, "config": cfg.to_dict()})


def _step(s: TrainState, i: int, rank: int = 0, world: int = 1) -> float:
    """Step ``i`` on this rank's share of a fixed batch (the i-th), the loss averaged over the ranks."""
    g = torch.Generator().manual_seed(100 + i)
    images = torch.randn(BATCH, 1, 28, 28, generator=g)
    enc, pred = MultiBlockMaskSampler(7, MaskConfig(min_keep=4))(BATCH, g)
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    loss = train_step(s, images[share], [m[share] for m in enc], [m[share] for m in pred], i)
    return D.all_reduce_mean(loss).item()


def _full(model: IJEPA) -> dict[str, torch.Tensor]:
    """The whole model's tensors (gathered from the shards: every rank must call it)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}


def _run(kind: str, rank: int, world: int, out: Path | None = None, *extra: str) -> dict:
    cfg, s = _parts(0, kind, *extra)
    losses, saved = [], None
    for i in range(STEPS):
        if i == SAVED_AT and out is not None:
            _checkpointer(F.ShardedCheckpointer, out, s, cfg, world, rank).save(i, losses[-1])
            saved = _full(s.model)
        losses.append(_step(s, i, rank, world))
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in s.model.parameters())
    return {"losses": losses, "weights": _full(s.model), "saved": saved, "local_numel": local}


def _worker(rank: int, world: int, init_file: str, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    res = {"ddp": _run("ddp", rank, world), "fsdp": _run("fsdp", rank, world, Path(out)),
           "fsdp_ac": _run("fsdp", rank, world, None, "meta.grad_checkpointing=true")}
    if rank == 0:
        torch.save(res, Path(out) / "results.pt")
    # last: train() leaves the process group when it ends
    train(cfg_with(*RUN, "optimization.max_steps=3"), Path(out) / "run")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Two gloo processes: 3 steps under DDP, under FSDP2 (saving a sharded checkpoint before its last step) and
    under FSDP2 with activation checkpointing, then ``ijepa train`` with meta.parallel=fsdp for 3 steps."""
    out = tmp_path_factory.mktemp("fsdp")
    torch.multiprocessing.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2)
    return out, torch.load(out / "results.pt", weights_only=True)


def test_fsdp_takes_the_same_steps_as_ddp(two_ranks):
    """Same losses and weights (encoder, predictor, target after the EMA) after 3 steps with clipping, fp32; with
    activation checkpointing too (it re-runs each block's forward, FSDP gathering the block again)."""
    _, res = two_ranks
    ddp = res["ddp"]
    assert res["fsdp"]["local_numel"] < 0.6 * ddp["local_numel"]  # rank 0 holds about half of every tensor
    for fsdp in (res["fsdp"], res["fsdp_ac"]):
        assert all(abs(a - b) < 1e-5 for a, b in zip(ddp["losses"], fsdp["losses"])), (ddp["losses"], fsdp["losses"])
        for k, v in ddp["weights"].items():
            assert torch.allclose(v, fsdp["weights"][k], atol=1e-5, rtol=0), (k, (v - fsdp["weights"][k]).abs().max())


def test_a_two_process_sharded_checkpoint_resumes_on_one(two_ranks):
    """Loaded on one process (re-sliced by DCP: weights and AdamW state), the last step on the whole batch
    lands where the two processes' last step did."""
    out, res = two_ranks
    cfg, s = _parts(seed=123)  # other initial weights: the checkpoint must replace them all
    ck = _checkpointer(F.ShardedCheckpointer, out, s, cfg, 1)
    path, extras = F.read_resume(out, "jepa", None, True)
    assert path == out / "jepa-latest.dcp" and extras["world_size"] == 2
    assert ck.restore(path, extras)[0] == SAVED_AT
    for k, v in res["fsdp"]["saved"].items():
        assert torch.equal(v, s.model.state_dict()[k]), k
    assert abs(_step(s, SAVED_AT) - res["fsdp"]["losses"][SAVED_AT]) < 1e-5
    for k, v in res["fsdp"]["weights"].items():
        assert torch.allclose(v, s.model.state_dict()[k], atol=1e-5, rtol=0), k


def test_converted_checkpoint_resumes_with_ddp_and_loads(two_ranks, tmp_path):
    """``ijepa convert RUN FILE --to checkpoint``'s file: the usual layout, which the single-file checkpointer
    resumes (optimizer state included) and ``ijepa.load`` reads, as it reads the folder itself."""
    out, res = two_ranks
    dst = tmp_path / "jepa-latest.pth.tar"
    assert main(["convert", str(out), str(dst), "--to", "checkpoint"]) == 0
    with pytest.raises(CheckpointError, match="is a folder"):
        convert_sharded(out, tmp_path)
    ckpt = load_checkpoint(dst)
    assert ckpt["step"] == SAVED_AT and "param_groups" not in ckpt and len(ckpt["opt"]["state"]) > 0
    cfg, s = _parts(seed=123)
    _checkpointer(Checkpointer, tmp_path, s, cfg, 1).restore(dst, ckpt)
    _step(s, SAVED_AT)
    for k, v in res["fsdp"]["weights"].items():
        assert torch.allclose(v, s.model.state_dict()[k], atol=1e-5, rtol=0), k
    saved = res["fsdp"]["saved"]["target_encoder.blocks.0.attn.qkv.weight"]
    for src in (out, out / "jepa-latest.dcp", dst):
        assert torch.equal(load(src).state_dict()["blocks.0.attn.qkv.weight"], saved), src
    assert read_sharded(out, optimizer=False).keys() >= {"encoder", "predictor", "target_encoder", "config"}


def test_ijepa_train_with_fsdp_resumes_on_one_process(two_ranks, capsys):
    """A 2-process ``meta.parallel: fsdp`` run's folder holds a sharded checkpoint; one process resumes it."""
    out, _ = two_ranks
    run = out / "run"
    assert find_sharded(run / "jepa-latest.dcp") == run / "jepa-latest.dcp"
    assert not list(run.glob("*.pth.tar")) and not list(run.glob("*.tmp"))
    summary = train(cfg_with(*RUN, "optimization.max_steps=5"), run)
    assert "resumed from" in capsys.readouterr().out and summary["steps"] == 5 and summary["complete"] is False
    assert read_sharded(run)["step"] == 5


def test_a_kill_between_the_renames_leaves_the_previous_checkpoint(tmp_path):
    """The folder is swapped in by two renames; a reader that finds no latest takes the one before."""
    cfg, s = _parts()
    ck = _checkpointer(F.ShardedCheckpointer, tmp_path, s, cfg, 1)
    ck.save(1, 0.5)
    ck.latest.rename(ck.latest.with_name(ck.latest.name + ".prev"))  # as if killed after the first rename
    path, extras = F.read_resume(tmp_path, "jepa", None, True)
    assert path.name == "jepa-latest.dcp.prev" and extras["step"] == 1 and read_sharded(tmp_path)["step"] == 1
    ck.save(2, 0.4)
    assert read_sharded(tmp_path / "jepa-latest.dcp")["step"] == 2 and not path.exists()


def test_memory_table_shards_everything_but_the_gathered_blocks():
    c = fsdp_memory.counts("vit_tiny", img=64)
    ddp, one, eight = (fsdp_memory.per_gpu(c, p, n) for p, n in (("ddp", 8), ("fsdp", 1), ("fsdp", 8)))
    assert ddp["total"] == pytest.approx(16 * (c["encoder"] + c["predictor"]) + 4 * (c["target"] + c["encoder_frozen"]
                                                                                    + c["predictor_frozen"]))
    assert one["total"] - one["gathered"] == pytest.approx(ddp["total"])
    assert eight["total"] - eight["gathered"] == pytest.approx(ddp["total"] / 8)
    assert c["target"] == c["encoder"] + c["encoder_frozen"]


def test_a_ddp_runs_single_file_is_not_resumed_under_fsdp(tmp_path):
    """Never a silent fresh start: the run folder's checkpoint is of the other layout."""
    cfg, s = _parts()
    _checkpointer(Checkpointer, tmp_path, s, cfg, 1).save(1, 0.5)
    with pytest.raises(CheckpointError, match="meta.parallel: ddp"):
        F.read_resume(tmp_path, "jepa", None, True)
    with pytest.raises(CheckpointError, match="not a sharded checkpoint folder"):
        F.read_resume(tmp_path, "jepa", str(tmp_path / "jepa-latest.pth.tar"), True)
    assert F.read_resume(tmp_path, "jepa", None, False) is None  # meta.load_checkpoint=false: a fresh start
