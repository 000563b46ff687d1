"""Checkpoints: the reference's layout plus what exact resume needs, written atomically, read safely.

Layout (a dict, ``torch.save``d): the reference's keys ``encoder``, ``predictor``, ``target_encoder``, ``opt``,
``scaler``, ``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr`` — so tools written for its files read ours —
and ours: ``format`` ("ijepa"), ``version``, ``step`` (global), ``batch_in_epoch`` (sampler position), ``rng``
(global CPU/CUDA generator states, for stochastic depth), ``arch`` (what rebuilds the models), ``input_spec``,
``config`` (the resolved run config).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write to a temporary file in the same folder, then rename: a crash mid-write never leaves a torn file
    where ``latest`` used to be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code from pickles); every failure is a
    :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated zips, pickles with objects, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {msg}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of states")
    return state


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
