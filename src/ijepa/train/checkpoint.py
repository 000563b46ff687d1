"""Checkpoints: the reference's layout plus what exact resume needs, written atomically, read safely.

Layout (a dict, ``torch.save``d): the reference's keys ``encoder``, ``predictor``, ``target_encoder``, ``opt``,
``scaler``, ``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr`` — so tools written for its files read ours —
and ours: ``format`` ("ijepa"), ``version``, ``step`` (global), ``batch_in_epoch`` (sampler position), ``rng``
(global CPU/CUDA generator states, for stochastic depth), ``arch`` (what rebuilds the models), ``input_spec``,
``config`` (the resolved run config, which a resume compares with its own: ``runfolder.py``), ``horizon`` (the
run's length and, for a timed run, its plan so far: a resume continues it; ``horizon.py``). ``scaler`` holds
fp16's loss-scaler state.
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
from .checkpoint_writer import BackgroundWriter, CheckpointTimer, snapshot
from .horizon import Horizon
from .ijepa import IJEPA
from .runfolder import no_space
from .schedules import Schedules

__all__ = ["Checkpointer", "load_checkpoint", "read_resume", "rng_state", "save_checkpoint", "set_rng_state"]

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
    """Saves and restores one run's training state: ``<tag>-latest.pth.tar`` (and ``<tag>-epN.pth.tar`` copies)
    in ``out``. Every rank calls :meth:`save` (rank 0 writes, all wait); a step already saved is not written
    again. ``info`` holds the run's constant keys (``batch_size``, ``world_size``, ``input_spec``, ``config``).
    ``timer`` says when a checkpoint is due by time (``logging.checkpoint_every_minutes``); every save restarts it."""

    def __init__(self, out: Path, tag: str, model: IJEPA, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, schedules: Schedules, *, steps_per_epoch: int, is_main: bool,
                 info: dict[str, Any], timer: CheckpointTimer | None = None):
        self.out, self.tag, self.model, self.optimizer = Path(out), tag, model, optimizer
        self.scaler, self.schedules = scaler, schedules
        self.steps_per_epoch, self.is_main, self.info = steps_per_epoch, is_main, info
        self.latest = self.out / f"{tag}-latest.pth.tar"
        self.last_saved = -1
        # a data pipeline whose position is not the step's (a streamed dataset): called by every rank at each save
        # (it may gather every rank's part), kept under "data_state"
        self.data_state: Any = None
        self._data: Any = None
        self.timer = timer or CheckpointTimer(0, lambda: 0.0)
        self.writer = BackgroundWriter()

    @property
    def horizon(self) -> Horizon:
        return self.schedules.horizon

    def state(self, step: int, loss: float) -> dict[str, Any]:
        m, ipe = self.model, self.steps_per_epoch
        return {"encoder": m.encoder.state_dict(), "predictor": m.predictor.state_dict(),
                "target_encoder": m.target_encoder.state_dict(), "opt": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "epoch": step // ipe, "loss": loss, "batch_size": self.info["batch_size"],
                "world_size": self.info["world_size"], "lr": self.schedules.lr_at(step), "format": "ijepa",
                "version": __version__, "step": step, "batch_in_epoch": step % ipe, "rng": rng_state(),
                "input_spec": self.info["input_spec"], "arch": m.arch_dict(), "config": self.info["config"],
                "horizon": self.horizon.state_dict(), "data_state": self._data}

    def save(self, step: int, loss: float, keep_epoch: int | None = None, *, background: bool = False) -> None:
        """Write the state after ``step`` (and the epoch's kept copy). ``background``: rank 0 copies the state to
        CPU memory and a thread writes it (:mod:`.checkpoint_writer`), so the next step does not wait for the
        disk; otherwise the write in flight ends first, then this one, and every rank waits for it."""
        if not background:
            self.wait()
        if step == self.last_saved:
            return
        self.last_saved = step
        self.timer.reset()
        self._data = self.data_state() if self.data_state is not None else None
        if self.is_main:
            # the kept copy first: a crash between the two writes resumes from the older latest and writes both again
            paths = [self.out / f"{self.tag}-ep{keep_epoch}.pth.tar"] if keep_epoch is not None else []
            if background:
                state = snapshot(self.state(step, loss))
                self.writer.submit(lambda: self._write(state, paths))
            else:
                self._write(self.state(step, loss), paths)
        if not background:
            D.barrier()

    def _write(self, state: dict[str, Any], paths: list[Path]) -> None:
        for path in [*paths, self.latest]:
            with no_space(path, self.latest):
                save_checkpoint(state, path)

    def wait(self) -> None:
        """Until the write in flight has ended; raises its error (a full disk) here."""
        self.writer.wait()

    def restore(self, path: Path, ckpt: dict[str, Any]) -> tuple[int, float]:
        """Load a checkpoint read by :func:`read_resume` into the run; returns (step, loss)."""
        try:
            self.model.encoder.load_state_dict(ckpt["encoder"])
            self.model.predictor.load_state_dict(ckpt["predictor"])
            self.model.target_encoder.load_state_dict(ckpt["target_encoder"])
            self.optimizer.load_state_dict(ckpt["opt"])
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not match this config's models: {e}") from None
        return self._resumed(path, ckpt)

    def _resumed(self, path: Path, ckpt: dict[str, Any], written_by: str = "") -> tuple[int, float]:
        """The rest of a resume once the weights and optimizer are loaded: RNG, scaler, step; (step, loss)."""
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        if self.is_main:
            print(f"resumed from {path} at step {step} (epoch {step // self.steps_per_epoch}{written_by})", flush=True)
        self.last_saved = step if path == self.latest else -1  # the latest already holds this very state
        return step, float(ckpt.get("loss", float("nan")))


def read_resume(out: Path, tag: str, read_checkpoint: str | None, load_latest: bool,
                map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a run resumes from: ``read_checkpoint`` (a file), else the run folder's latest when
    ``load_latest`` and it exists; None for a fresh start. A checkpoint that exists but cannot be used is an
    error, never a silent fresh start."""
    path = Path(read_checkpoint) if read_checkpoint else Path(out) / f"{tag}-latest.pth.tar"
    if not (read_checkpoint or (load_latest and path.exists())):
        return None
    ckpt = load_checkpoint(path, map_location=map_location)
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a resumable ijepa checkpoint")
    return path, ckpt
