"""Sharded training checkpoints (``meta.parallel: fsdp``): a folder that ``torch.distributed.checkpoint`` (DCP)
wrote, each rank its own shards, read here into the usual single-file layout without building a model.

A folder ``<tag>-latest.dcp/`` holds DCP's files (``.metadata`` and one ``__<rank>_0.distcp`` per writing rank)
and ``extras.pt``: every key of the usual layout (``ijepa.train.checkpoint``) that is not a tensor (step, epoch,
loss, rng, config, arch, input_spec, horizon, ...) plus ``param_groups``, the optimizer's groups with each
parameter named by its path in the model (``encoder.blocks.0.attn.qkv.weight``) rather than by its position.
The tensors are saved as two trees: ``model`` (the whole model's state dict: ``encoder.*``, ``predictor.*``,
``target_encoder.*``) and ``optim`` (AdamW's state per parameter path). Only tensors go through DCP, so nothing
is ever unpickled beyond ``weights_only``.

The folder is written whole into ``<name>.tmp`` and renamed into place; the one before is kept as
``<name>.prev`` until the new one is in, and a reader that finds no ``<name>`` takes ``<name>.prev``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CheckpointReadError, first_line
from ..io import existing, read_torch, save_torch

SHARDED_SUFFIX = ".dcp"
EXTRAS = "extras.pt"
DCP_METADATA = ".metadata"
TENSOR_KEYS = ("encoder", "predictor", "target_encoder", "opt")

__all__ = ["EXTRAS", "SHARDED_SUFFIX", "convert_sharded", "find_sharded", "is_sharded", "latest_in",
           "quiet_single_process", "read_sharded"]


@contextlib.contextmanager
def quiet_single_process() -> Iterator[None]:
    """Without a process group DCP reads and writes as one process, as meant here: its warning saying so is
    dropped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete sharded checkpoint folder."""
    p = Path(path)
    return p.is_dir() and (p / DCP_METADATA).is_file() and (p / EXTRAS).is_file()


def latest_in(run: str | os.PathLike) -> Path | None:
    """A run folder's sharded checkpoint: its ``*-latest.dcp``, else the ``.prev`` one a kill between the two
    renames left; None when it holds neither."""
    p = Path(run)
    for pattern in (f"*-latest{SHARDED_SUFFIX}", f"*-latest{SHARDED_SUFFIX}.prev"):
        found = [f for f in sorted(p.glob(pattern)) if is_sharded(f)]
        if found:
            return found[0]
    return None


def find_sharded(path: str | os.PathLike) -> Path | None:
    """``path`` if it is a complete sharded checkpoint, else its ``.prev`` (the one before, kept while a new one
    was renamed in) if that is; None when neither is."""
    p = Path(path)
    for cand in (p, p.with_name(p.name + ".prev")):
        if is_sharded(cand):
            return cand
    return None


def read_extras(folder: str | os.PathLike) -> dict[str, Any]:
    extras = read_torch(Path(folder) / EXTRAS)
    if not isinstance(extras, dict) or "step" not in extras:
        raise CheckpointReadError(f"{folder}/{EXTRAS} is not a sharded ijepa checkpoint's record")
    return extras


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor the folder holds, whole, under DCP's flattened names (``model.encoder.norm.weight``,
    ``optim.encoder.norm.weight.exp_avg``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(folder))
    try:
        meta = reader.read_metadata()
        sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.state_dict_metadata.items()
              if isinstance(m, TensorStorageMetadata)}
        with quiet_single_process():
            dcp.load(sd, storage_reader=reader, no_dist=True)
    except Exception as e:  # DCP wraps every failure (a missing or torn shard file) in its own exception types
        raise CheckpointReadError(f"{folder}: unreadable sharded checkpoint ({first_line(e)})") from None
    return sd


def optimizer_by_position(state: dict[str, dict[str, Any]], param_groups: list[dict]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter path -> torch's own layout (parameters numbered in group order),
    the one ``Optimizer.load_state_dict`` reads."""
    groups, out, i = [], {}, 0
    for g in param_groups:
        ids = []
        for name in g["params"]:
            if name in state:
                out[i] = state[name]
            ids.append(i)
            i += 1
        groups.append({**g, "params": ids})
    return {"state": out, "param_groups": groups}


def read_sharded(folder: str | os.PathLike, optimizer: bool = True) -> dict[str, Any]:
    """A sharded checkpoint folder (or a run folder holding ``*-latest.dcp``) -> the usual single-file layout, in
    memory: ``encoder``, ``predictor``, ``target_encoder``, ``opt`` (torch's optimizer layout; without it when
    not ``optimizer``) and every other key of the layout."""
    folder = existing(folder)
    if not is_sharded(folder):
        found = latest_in(folder) if folder.is_dir() else None
        if found is None:
            raise CheckpointError(f"{folder} is not a sharded checkpoint folder (no {DCP_METADATA} and {EXTRAS}) "
                                  f"and holds no *-latest{SHARDED_SUFFIX}")
        folder = found
    extras = read_extras(folder)
    out: dict[str, Any] = {k: v for k, v in extras.items() if k != "param_groups"}
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "predictor": {}, "target_encoder": {}}
    opt_state: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in _read_tensors(folder).items():
        tree, _, rest = key.partition(".")
        if tree == "model":
            part, _, name = rest.partition(".")
            if part in parts:
                parts[part][name] = t
        elif tree == "optim" and optimizer:
            name, _, what = rest.rpartition(".")
            opt_state.setdefault(name, {})[what] = t
    out.update(parts)
    if optimizer:
        out["opt"] = optimizer_by_position(opt_state, extras["param_groups"])
    return out


def convert_sharded(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write a sharded checkpoint (folder, or a run folder holding one) as one usual ``.pth.tar`` file (atomic),
    which ``ijepa.load``, ``ijepa convert`` and a resume under ``meta.parallel: ddp`` read."""
    state = read_sharded(src)
    dst = Path(dst)
    if dst.is_dir():
        raise CheckpointError(f"{dst} is a folder; the converted checkpoint is one file "
                              f"(e.g. {dst}/jepa-latest.pth.tar)")
    return save_torch(state, dst)
