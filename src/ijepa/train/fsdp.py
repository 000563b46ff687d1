"""``meta.parallel: fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) over the three networks, and the
sharded checkpoints that go with it.

Sharding. Each block of the context encoder, of the predictor and of the target encoder is its own FSDP unit, and
each network's remaining parameters (patch embedding, norms, the predictor's projections) are one more; all on one
mesh over every rank. The target encoder is a copy of the context encoder, so its units hold the same shapes and
each rank holds the same slice (dim 0, in ``world_size`` chunks) of both: the EMA (:meth:`IJEPA.update_target`)
is then a ``_foreach_lerp_`` of each rank's local shards, with no gather. Parameters, gradients and AdamW's state
stay sharded (fp32); a unit's whole parameters exist only while it runs, in ``meta.precision``'s dtype
(``MixedPrecisionPolicy``: bf16 or fp16 parameters, gradients reduce-scattered in fp32). Activation checkpointing
(``meta.grad_checkpointing``) re-runs a block's forward in backward, where FSDP gathers its parameters again.

Without a process group (one process, not under torchrun) nothing is sharded, and the run still writes and reads
sharded checkpoints: a run resumes from one written by any number of processes (DCP re-slices the tensors).

Checkpoints: ``<tag>-latest.dcp/`` (and ``<tag>-epN.dcp/`` copies), the layout :mod:`ijepa.interop.sharded`
describes and reads; every rank writes its own shards, the folder is written whole then renamed into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .. import __version__
from ..errors import CheckpointError, ConfigError, first_line
from ..interop.sharded import EXTRAS, SHARDED_SUFFIX, find_sharded, quiet_single_process, read_extras
from ..io import save_torch
from ..precision import Precision
from . import distributed as D
from .checkpoint import Checkpointer, rng_state
from .ijepa import IJEPA
from .runfolder import no_space

__all__ = ["ShardedCheckpointer", "block_lists", "load_sharded", "read_resume", "shard_model"]


def block_lists(model: IJEPA) -> list[tuple[nn.Module, nn.ModuleList]]:
    """(network, its blocks) for the context encoder, the predictor and the target encoder."""
    nets = (model.encoder, model.predictor, model.target_encoder)
    return [(n, n.blocks if hasattr(n, "blocks") else n.predictor_blocks) for n in nets]


def shard_model(model: IJEPA, precision: Precision, device: torch.device) -> IJEPA:
    """FSDP2 over ``model``'s three networks in place, every block a unit, on one mesh over all ranks (the
    process group must be up). Build the optimizer afterwards: sharding replaces the parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        raise ConfigError(f"meta.parallel: fsdp needs torch 2.6 or later (FSDP2's fully_shard); this is torch "
                          f"{torch.__version__}") from None

    if any(True for _ in model.terms.parameters()):
        raise ConfigError("meta.parallel: fsdp shards the encoders and the predictor only; a loss term with "
                          "parameters of its own is not supported")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=precision.dtype if precision.reduced else None,
                              reduce_dtype=torch.float32)
    # every unit reshards after its forward, the networks' roots too (FSDP2 keeps a root's parameters gathered by
    # default, until its backward ends): the target encoder has no backward, and the EMA and the checkpoints need
    # every parameter sharded once a step is over
    for net, blocks in block_lists(model):
        for unit in [*blocks, net]:
            fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    return model


def _state_dicts(model: IJEPA, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state) keyed by parameter path, each tensor this rank's shard (or the whole
    tensor when unsharded): what DCP saves and loads into."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return get_model_state_dict(model), get_optimizer_state_dict(model, optimizer)


def load_sharded(model: IJEPA, optimizer: torch.optim.Optimizer, folder: Path, param_groups: list[dict]) -> None:
    """The tensors of a sharded checkpoint into ``model`` and ``optimizer``, re-sliced for this run's ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    msd, osd = _state_dicts(model, optimizer)
    state = {"model": msd, "optim": osd["state"]}
    try:
        with quiet_single_process():
            dcp.load(state, checkpoint_id=str(folder))
    except Exception as e:  # DCP reports a missing key or a wrong shape through its own exception types
        raise CheckpointError(f"{folder} does not match this config's models: {first_line(e)}") from None
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, {"state": state["optim"], "param_groups": param_groups})


def read_resume(out: Path, tag: str, read_checkpoint: str | None, load_latest: bool) -> tuple[Path, dict] | None:
    """The sharded checkpoint a run resumes from, as :func:`ijepa.train.checkpoint.read_resume` (``read_checkpoint``
    names a folder here): (folder, its extras.pt record, which holds step, config and horizon) or None."""
    path = Path(read_checkpoint) if read_checkpoint else Path(out) / f"{tag}-latest{SHARDED_SUFFIX}"
    found = find_sharded(path)
    if read_checkpoint and found is None:
        raise CheckpointError(f"{path} is not a sharded checkpoint folder (meta.parallel: fsdp resumes from the "
                              f"{SHARDED_SUFFIX} folders it writes)")
    if not read_checkpoint:
        single = Path(out) / f"{tag}-latest.pth.tar"
        if found is None and load_latest and single.exists():
            raise CheckpointError(f"{single} was written with meta.parallel: ddp; resume it with ddp, or start "
                                  "this fsdp run in another folder")
        if found is None or not load_latest:
            return None
    return found, read_extras(found)


def _swap_in(tmp: Path, final: Path) -> None:
    """``tmp`` renamed to ``final``; a ``final`` already there is kept as ``final.prev`` until then."""
    prev = final.with_name(final.name + ".prev")
    if final.exists():
        shutil.rmtree(prev, ignore_errors=True)
        final.rename(prev)
    tmp.rename(final)
    shutil.rmtree(prev, ignore_errors=True)


class ShardedCheckpointer(Checkpointer):
    """:class:`~ijepa.train.checkpoint.Checkpointer` for ``meta.parallel: fsdp``: ``<tag>-latest.dcp/`` folders
    that every rank writes its shards into (``torch.distributed.checkpoint``) and rank 0 completes with
    ``extras.pt``; written whole into ``<name>.tmp`` and renamed into place."""

    def __init__(self, out: Path, tag: str, *args, **kw):
        super().__init__(out, tag, *args, **kw)
        self.latest = self.out / f"{tag}-latest{SHARDED_SUFFIX}"

    def extras(self, step: int, loss: float, groups: list[dict]) -> dict[str, Any]:
        """Every key of the usual layout but the tensors', and ``groups``: the optimizer's, by parameter path."""
        m, ipe, h = self.model, self.steps_per_epoch, self.horizon
        return {"scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "epoch": step // ipe, "loss": loss, "batch_size": self.info["batch_size"],
                "world_size": self.info["world_size"], "lr": self.schedules.lr_at(step), "format": "ijepa",
                "version": __version__, "step": step, "batch_in_epoch": step % ipe, "rng": rng_state(),
                "input_spec": self.info["input_spec"], "arch": m.arch_dict(), "config": self.info["config"],
                "horizon": h.state_dict(), "param_groups": groups}

    def _write_folder(self, step: int, loss: float, final: Path) -> None:
        import torch.distributed.checkpoint as dcp

        tmp = final.with_name(final.name + ".tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a killed save's leftovers (the run folder's lock is ours)
        D.barrier()
        msd, osd = _state_dicts(self.model, self.optimizer)
        extras = self.extras(step, loss, osd["param_groups"])
        with no_space(final, self.latest):
            with quiet_single_process():
                dcp.save({"model": msd, "optim": osd["state"]}, checkpoint_id=str(tmp))
            if self.is_main:
                save_torch(extras, tmp / EXTRAS)
                _swap_in(tmp, final)
        D.barrier()

    def save(self, step: int, loss: float, keep_epoch: int | None = None, *, background: bool = False) -> None:
        """Write the state after ``step`` (and the epoch's kept copy first, as the single-file checkpointer).
        Always in the foreground (``background`` changes nothing): every rank writes its own shards in DCP's
        collective save before the next step."""
        if step == self.last_saved:
            return
        self.last_saved = step
        self.timer.reset()
        if keep_epoch is not None:
            self._write_folder(step, loss, self.out / f"{self.tag}-ep{keep_epoch}{SHARDED_SUFFIX}")
        self._write_folder(step, loss, self.latest)

    def restore(self, path: Path, ckpt: dict[str, Any]) -> tuple[int, float]:
        """Load the sharded checkpoint ``path`` (``ckpt``: its extras, from :func:`read_resume`); (step, loss)."""
        load_sharded(self.model, self.optimizer, path, ckpt["param_groups"])
        return self._resumed(path, ckpt, f", written by {ckpt.get('world_size')} processes")
