"""Checkpoints: the reference's layout plus what exact resume needs, written atomically, read safely.

Layout (a dict, ``torch.save``d): the reference's keys ``encoder``, ``predictor``, ``target_encoder``, ``opt``,
``scaler``, ``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr`` — so tools written for its files read ours —
and ours: ``format`` ("ijepa"), ``version``, ``step`` (global), ``batch_in_epoch`` (sampler position), ``rng``
(global CPU/CUDA generator states, for stochastic depth), ``arch`` (what rebuilds the models), ``input_spec``,
``config`` (the resolved run config), ``total_steps`` (the step count a time-budgeted run was planned with, so
that its resume keeps the same schedules; None otherwise). ``scaler`` holds fp16's loss-scaler state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError, CheckpointReadError
from ..io import read_torch, save_torch
from . import distributed as D
from .ijepa import IJEPA
from .schedules import Schedules

__all__ = ["CheckpointError", "Checkpointer", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

RESUME_KEYS = ("encoder", "predictor", "target_encoder", "opt", "step")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically (a crash mid-write never leaves a torn file where ``latest`` used to be)."""
    return save_torch(state, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code from pickles); every failure is a
    :class:`~ijepa.errors.CheckpointError` naming the file."""
    state = read_torch(path, map_location=map_location)
    if not isinstance(state, dict):
        raise CheckpointReadError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of states")
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


class Checkpointer:
    """Saves and resumes one run's model and optimizer: ``<tag>-latest.pth.tar`` (and ``<tag>-epN.pth.tar``
    copies) in ``out``. Every rank calls :meth:`save` (rank 0 writes, all wait); a step already saved is not
    written again. ``info`` holds the run's constant keys (``batch_size``, ``world_size``, ``input_spec``,
    ``config``)."""

    def __init__(self, out: Path, tag: str, model: IJEPA, optimizer: torch.optim.Optimizer, schedules: Schedules,
                 *, steps_per_epoch: int, is_main: bool, info: dict[str, Any]):
        self.out, self.tag, self.model, self.optimizer, self.schedules = Path(out), tag, model, optimizer, schedules
        self.steps_per_epoch, self.is_main, self.info = steps_per_epoch, is_main, info
        self.latest = self.out / f"{tag}-latest.pth.tar"
        self.last_saved = -1
        self.scaler: torch.amp.GradScaler | None = None  # fp16's loss scaler, saved and restored with the rest
        self.resumed_total_steps: int | None = None  # the step count a resumed run was planned with
        self.resumed_step = 0

    def state(self, step: int, loss: float) -> dict[str, Any]:
        m, ipe = self.model, self.steps_per_epoch
        return {"encoder": m.encoder.state_dict(), "predictor": m.predictor.state_dict(),
                "target_encoder": m.target_encoder.state_dict(), "opt": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None and self.scaler.is_enabled() else None,
                "epoch": step // ipe, "loss": loss, "batch_size": self.info["batch_size"],
                "world_size": self.info["world_size"], "lr": self.schedules.lr_at(step), "format": "ijepa",
                "version": __version__, "step": step, "batch_in_epoch": step % ipe, "rng": rng_state(),
                "input_spec": self.info["input_spec"], "arch": m.arch_dict(), "config": self.info["config"],
                "total_steps": self.info.get("total_steps")}

    def save(self, step: int, loss: float, keep_epoch: int | None = None) -> None:
        if step == self.last_saved:
            return
        self.last_saved = step
        if self.is_main:
            state = self.state(step, loss)
            # the kept copy first: a crash between the two writes resumes from the older latest and writes both again
            if keep_epoch is not None:
                save_checkpoint(state, self.out / f"{self.tag}-ep{keep_epoch}.pth.tar")
            save_checkpoint(state, self.latest)
        D.barrier()

    def resume(self, read_checkpoint: str | None, load_latest: bool,
               map_location: str | torch.device = "cpu") -> tuple[int, float] | None:
        """Load ``read_checkpoint`` (a file), else the run's latest when ``load_latest`` and it exists; returns
        (step, loss) or None for a fresh start. A checkpoint that exists but cannot be used is an error, never a
        silent fresh start."""
        path = Path(read_checkpoint) if read_checkpoint else self.latest
        if not (read_checkpoint or (load_latest and path.exists())):
            return None
        ckpt = load_checkpoint(path, map_location=map_location)
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a resumable ijepa checkpoint")
        try:
            self.model.encoder.load_state_dict(ckpt["encoder"])
            self.model.predictor.load_state_dict(ckpt["predictor"])
            self.model.target_encoder.load_state_dict(ckpt["target_encoder"])
            self.optimizer.load_state_dict(ckpt["opt"])
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not match this config's models: {e}") from None
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        if ckpt.get("scaler") and self.scaler is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.resumed_total_steps = ckpt.get("total_steps")
        self.resumed_step = int(ckpt["step"])
        step = int(ckpt["step"])
        if self.is_main:
            print(f"resumed from {path} at step {step} (epoch {step // self.steps_per_epoch})", flush=True)
        self.last_saved = step if path == self.latest else -1  # the latest already holds this very state
        return step, float(ckpt.get("loss", float("nan")))
