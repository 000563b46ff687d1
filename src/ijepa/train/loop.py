"""I-JEPA pretraining: one optimisation step (``train_step``) and the loop around it (``train``).

The pieces live beside this file: the model and its loss in ``ijepa.py`` (:class:`IJEPA`), checkpoints in
``checkpoint.py`` (:class:`Checkpointer`), the logs in ``runlog.py`` (:class:`RunLog`), the collapse checks in
``monitor.py``, the schedules in ``schedules.py``; ``train`` puts them in order.
"""

from __future__ import annotations

import itertools
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..data.decode import SkipTally
from ..device import flush_denormals, resolve_device
from ..errors import NonFiniteLossError
from ..io import atomic_write_json
from ..masks import MultiBlockMaskSampler
from ..optim import set_lr
from ..precision import Precision, backward_step, resolve_precision
from ..seeding import generator_for
from . import distributed as D
from .budget import horizon, total_steps_of
from .checkpoint import Checkpointer
from .ijepa import IJEPA, sigreg, vicreg_terms
from .inputs import build_pipeline
from .monitor import Monitor
from .runlog import RunLog, step_row
from .schedules import Schedules

__all__ = ["IJEPA", "NonFiniteLossError", "TrainState", "sigreg", "train", "train_step", "vicreg_terms"]


@dataclass
class TrainState:
    model: IJEPA
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    device: torch.device
    precision: Precision | bool  # the policy's choice (a bool means bf16 or fp32, as older callers pass it)
    clip_grad: float | None = None
    forward: nn.Module | None = None  # what computes the loss: DDP(model) when distributed, else the model
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaler (a disabled one otherwise)

    def __post_init__(self) -> None:
        if isinstance(self.precision, bool):
            self.precision = Precision("bf16" if self.precision else "fp32", self.device.type)
        if self.scaler is None:
            self.scaler = self.precision.grad_scaler()

    @property
    def bf16(self) -> bool:
        return self.precision.name == "bf16"


def train_step(s: TrainState, images: torch.Tensor, masks_enc: list[torch.Tensor],
               masks_pred: list[torch.Tensor], step: int) -> torch.Tensor:
    """Scheduled lr and weight decay -> loss -> backward -> (clip) -> AdamW step -> EMA update of the target.
    In fp16 the loss is scaled and a step with inf/NaN gradients skipped (``backward_step``); bf16 and fp32 run
    the plain step, bit for bit."""
    set_lr(s.optimizer, s.schedules.lr_at(step), s.schedules.wd_at(step))
    with s.precision.autocast():
        loss = (s.forward or s.model)(images, masks_enc, masks_pred)
    s.optimizer.zero_grad(set_to_none=True)
    backward_step(loss, s.optimizer, s.scaler, clip_grad=s.clip_grad)
    s.model.update_target(s.schedules.momentum_at(step))
    return loss.detach()


class Preemption:
    """SIGTERM / SIGUSR1 (what SLURM sends before pre-emption) set a flag; the loop saves and exits at the
    next step boundary instead of dying mid-write."""

    def __init__(self):
        self.requested: str | None = None
        self._old = {}

    def __enter__(self) -> Preemption:
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread (e.g. some notebook runners)
                    pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = f"received {signal.Signals(signum).name}"

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------------------ the setup


def setup_device(cfg: Config) -> tuple[torch.device, D.DistInfo, Precision]:
    """(device, process group facts, the precision policy's choice) with the process group joined and the seed
    set."""
    device = resolve_device(cfg.meta.device)
    dist = D.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.meta.threads:
        torch.set_num_threads(cfg.meta.threads)
    if device.type == "cpu":
        flush_denormals(cfg.meta.flush_denormal)
    torch.manual_seed(cfg.meta.seed)  # identical initial weights on every rank
    return device, dist, resolve_precision(cfg.meta.precision_request, device)


def distribute(model: IJEPA, cfg: Config, dist: D.DistInfo, device: torch.device) -> nn.Module:
    """What computes the loss: ``model``, its compiled view (meta.compile), and that in DDP when distributed."""
    forward = model.compiled() if cfg.meta.compile else model
    if not dist.enabled:
        return forward
    return DDP(forward, device_ids=[dist.local_rank] if device.type == "cuda" else None)


def report(summary: dict, is_main: bool) -> None:
    if is_main and summary["stopped"]:
        print(f"{summary['stopped']}: saved {summary['checkpoint']} at step {summary['steps']}; resume with the "
              "same command", flush=True)
    if is_main and summary["skipped_images"]:
        print(summary["skipped_line"], flush=True)


# ------------------------------------------------------------------------------------------------- the loop


def plan_horizon(cfg: Config, state: TrainState, ckpt: Checkpointer, data, masks, monitor: Monitor, rank: int,
                 t_start: float, out_dir: Path, min_fit: float | None = None) -> int | None:
    """The run's planned step count (None: ``epochs`` long), measuring a time budget when there is one; the
    plan goes into the config (so ``config.yaml`` reproduces it), the checkpoints and ``budget.json``."""
    batches = None

    def run_step(draw: int) -> None:
        # A throwaway step (the budget restores the state after) on a batch of its own, drawn through the
        # pipeline as the run's steps are: timing one cached batch left out the crops and the collation, and
        # budgeted runs then overran. The masks are draw `draw`'s, which the timing runs twice (budget.time_steps).
        nonlocal batches
        if batches is None:  # epochs again when a small dataset has fewer batches than the timing's steps
            batches = (x for e in itertools.count() for x, _ in data.epoch(e) if x is not None)
        images = next(batches)
        enc, pred = masks(len(images), generator_for("mask", cfg.meta.seed, rank, draw))
        dev = state.device
        train_step(state, images, [m.to(dev) for m in enc], [m.to(dev) for m in pred], draw)

    state.schedules = Schedules.from_config(cfg.optimization, data.steps_per_epoch)  # for the throwaway steps
    timed = {"model": state.model, "optimizer": state.optimizer, "scaler": state.scaler}
    configured = total_steps_of(cfg.optimization, data.steps_per_epoch)
    steps, plan = horizon(cfg, ckpt, run_step, lambda: monitor(0), timed, state.device, t_start,
                          min_fit)
    if steps is not None:
        cfg.optimization.total_steps = ckpt.info["total_steps"] = steps
        ckpt.info["config"] = cfg.to_dict()
    if plan is not None and ckpt.is_main:
        atomic_write_json(out_dir / "budget.json", plan.to_dict())
        measured = (f"{plan.step_seconds:.3f} s a step measured here, {plan.check_seconds:.1f} s a check, "
                    f"{plan.setup_seconds:.1f} s start-up")
        if cfg.optimization.minutes is not None:
            print(f"time budget: {plan.minutes:g} min -> {steps} steps ({measured})", flush=True)
        elif plan.capped:
            print(f"time cap: {plan.minutes:g} min -> {steps} steps instead of the {configured} configured, every "
                  f"schedule annealed over them ({measured})", flush=True)
        else:
            print(f"time cap: {plan.minutes:g} min; the configured {plan.total_steps} steps fit ({measured})",
                  flush=True)
    return steps


def train(cfg: Config, out_dir: str | Path, *, min_fit: float | None = None) -> dict:
    """Pretrain as ``cfg`` says, writing everything under ``out_dir``; returns a summary dict. ``min_fit``: a
    new run whose time cap fits fewer than this share of its configured steps on this machine raises
    :class:`~ijepa.errors.RecipeTooSlowError` at start-up, before it writes anything (the CPU default's ladder)."""
    t_start = time.perf_counter()  # a time budget counts from here
    device, dist, precision = setup_device(cfg)
    data = build_pipeline(cfg.data, dist, cfg.meta.seed, device)
    ipe, lg = data.steps_per_epoch, cfg.logging
    model = IJEPA.from_config(cfg, data.input_spec)
    masks = MultiBlockMaskSampler(model.grid_size, cfg.mask)
    model.to(device)
    optimizer = model.configure_optimizer(cfg.optimization, device.type)
    state = TrainState(model, optimizer, None, device, precision, cfg.optimization.clip_grad,
                       distribute(model, cfg, dist, device))
    ckpt = Checkpointer(Path(out_dir), lg.write_tag, model, optimizer, None, steps_per_epoch=ipe,
                        is_main=dist.is_main, info={"batch_size": cfg.data.batch_size, "world_size": dist.world_size,
                                                    "input_spec": data.input_spec.to_dict(), "config": cfg.to_dict()})
    ckpt.scaler = state.scaler
    start_step, last_loss = ckpt.resume(cfg.meta.read_checkpoint, cfg.meta.load_checkpoint, device) or (0, math.nan)
    monitor = Monitor(model.target_encoder, data.monitor_batch(), data.knn_sets() if lg.online_knn else None,
                      device.type, state.bf16)
    planned = plan_horizon(cfg, state, ckpt, data, masks, monitor, dist.rank, t_start, Path(out_dir), min_fit)
    state.schedules = ckpt.schedules = schedules = Schedules.from_config(cfg.optimization, ipe, planned)
    total_steps = total_steps_of(cfg.optimization, ipe)
    images_per_step = cfg.data.batch_size * dist.world_size
    step, skipped, stopped, t_loop = start_step, SkipTally(), None, time.perf_counter()
    with RunLog(Path(out_dir), cfg, is_main=dist.is_main, start_step=start_step, total_steps=total_steps,
                steps_per_epoch=ipe, checkpoint_name=ckpt.latest.name, last_loss=last_loss) as log, \
            Preemption() as preempt:
        while step < total_steps and stopped is None:
            epoch, start_batch = divmod(step, ipe)
            t_last = time.perf_counter()
            for images, skipped_here in data.epoch(epoch, start_batch):
                skipped.add(skipped_here)
                if images is None:
                    continue
                masks_enc, masks_pred = masks(images.shape[0], generator_for("mask", cfg.meta.seed, dist.rank, step))
                masks_enc = [m.to(device, non_blocking=True) for m in masks_enc]
                masks_pred = [m.to(device, non_blocking=True) for m in masks_pred]
                loss = train_step(state, images, masks_enc, masks_pred, step)
                now = time.perf_counter()
                dt, t_last = now - t_last, now
                log.record(step_row(epoch, step, schedules, masks_enc, masks_pred, dt, images_per_step,
                                    skipped.occurrences), loss)
                step += 1
                if step % lg.log_freq == 0 or step == total_steps:
                    log.flush(show_lr=schedules.lr_at(step))
                # epoch ends and the last step get the full check (with the k-NN) below
                if lg.monitor_freq and step % lg.monitor_freq == 0 and step % ipe and step < total_steps:
                    log.monitor(step, monitor(step, knn=False))
                if lg.checkpoint_every_steps and step % lg.checkpoint_every_steps == 0 and step % ipe:
                    ckpt.save(step, log.flush())
                stopped = preempt.requested
                if stopped or step >= total_steps:
                    break
            if stopped is None and step % ipe == 0:  # a whole epoch done: the full check, then the checkpoint
                log.monitor(step, monitor(step))
                keep = lg.checkpoint_freq and (step // ipe) % lg.checkpoint_freq == 0
                ckpt.save(step, log.flush(), keep_epoch=step // ipe if keep else None)
        final_loss = log.flush()
        ckpt.save(step, final_loss)
        stats = {} if stopped else monitor(step)
        if not stopped:
            log.monitor(step, stats)
        elapsed = time.perf_counter() - t_loop
        summary = {"steps": step, "epochs": step / ipe, "final_loss": final_loss, "minutes": elapsed / 60,
                   "images_seen": (step - start_step) * images_per_step,
                   "images_per_s": (step - start_step) * images_per_step / max(elapsed, 1e-9), "bf16": state.bf16,
                   "precision": str(state.precision),
                   "wall_minutes": (time.perf_counter() - t_start) / 60, "planned_steps": planned,
                   "device": str(device), "world_size": dist.world_size,
                   "skipped_images": skipped.occurrences, "skipped_files": skipped.files,
                   "skipped": dict(list(skipped.reasons.items())[:100]),  # file -> reason, the first 100
                   "skipped_line": skipped.line() if skipped.occurrences else None,
                   "checkpoint": str(ckpt.latest), "stopped": stopped, **stats}
        log.write_summary(summary)
    report(summary, dist.is_main)
    D.cleanup()
    return summary
