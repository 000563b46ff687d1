"""I-JEPA pretraining: one optimisation step (``train_step``) and the loop around it (``train``).

The pieces live beside this file: the model and its loss in ``ijepa.py`` (:class:`IJEPA`), checkpoints in
``checkpoint.py`` (:class:`Checkpointer`), the logs in ``runlog.py`` (:class:`RunLog`), the collapse checks in
``monitor.py``, the schedules in ``schedules.py``; ``train`` puts them in order.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import record_function

from ..config import Config, OptimizationConfig
from ..data.decode import SkipTally
from ..device import bf16_supported, resolve_device
from ..errors import NonFiniteLossError
from ..masks import MultiBlockMaskSampler
from ..optim import set_lr
from ..seeding import generator_for
from . import distributed as D
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
    bf16: bool
    clip_grad: float | None = None
    forward: nn.Module | None = None  # what computes the loss: DDP(model) when distributed, else the model


def train_step(s: TrainState, images: torch.Tensor, masks_enc: list[torch.Tensor],
               masks_pred: list[torch.Tensor], step: int) -> torch.Tensor:
    """Scheduled lr and weight decay -> loss -> backward -> (clip) -> AdamW step -> EMA update of the target."""
    set_lr(s.optimizer, s.schedules.lr_at(step), s.schedules.wd_at(step))
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.bf16):
        loss = (s.forward or s.model)(images, masks_enc, masks_pred)
    s.optimizer.zero_grad(set_to_none=True)
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        if s.clip_grad:
            torch.nn.utils.clip_grad_norm_([p for g in s.optimizer.param_groups for p in g["params"]], s.clip_grad)
        s.optimizer.step()
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


def setup_device(cfg: Config) -> tuple[torch.device, D.DistInfo, bool]:
    """(device, process group facts, bf16?) with the process group joined and the seed set."""
    device = resolve_device(cfg.meta.device)
    dist = D.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.meta.threads:
        torch.set_num_threads(cfg.meta.threads)
    torch.manual_seed(cfg.meta.seed)  # identical initial weights on every rank
    return device, dist, cfg.meta.use_bfloat16 and bf16_supported(device)


def total_steps_of(opt: OptimizationConfig, steps_per_epoch: int) -> int:
    total = opt.epochs * steps_per_epoch
    return min(total, opt.max_steps) if opt.max_steps else total


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


def train(cfg: Config, out_dir: str | Path) -> dict:
    """Pretrain as ``cfg`` says, writing everything under ``out_dir``; returns a summary dict."""
    device, dist, bf16 = setup_device(cfg)
    data = build_pipeline(cfg.data, dist, cfg.meta.seed, device)
    ipe, lg = data.steps_per_epoch, cfg.logging
    total_steps = total_steps_of(cfg.optimization, ipe)
    model = IJEPA.from_config(cfg, data.input_spec)
    masks = MultiBlockMaskSampler(model.grid_size, cfg.mask)
    model.to(device)
    optimizer = model.configure_optimizer(cfg.optimization, device.type)
    schedules = Schedules.from_config(cfg.optimization, ipe)
    ckpt = Checkpointer(Path(out_dir), lg.write_tag, model, optimizer, schedules, steps_per_epoch=ipe,
                        is_main=dist.is_main, info={"batch_size": cfg.data.batch_size, "world_size": dist.world_size,
                                                    "input_spec": data.input_spec.to_dict(), "config": cfg.to_dict()})
    start_step, last_loss = ckpt.resume(cfg.meta.read_checkpoint, cfg.meta.load_checkpoint, device) or (0, math.nan)
    state = TrainState(model, optimizer, schedules, device, bf16, cfg.optimization.clip_grad,
                       distribute(model, cfg, dist, device))
    monitor = Monitor(model.target_encoder, data.monitor_batch(), data.knn_sets() if lg.online_knn else None,
                      device.type, bf16)
    images_per_step = cfg.data.batch_size * dist.world_size
    step, skipped, stopped, t_start = start_step, SkipTally(), None, time.perf_counter()
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
        elapsed = time.perf_counter() - t_start
        summary = {"steps": step, "epochs": step / ipe, "final_loss": final_loss, "minutes": elapsed / 60,
                   "images_seen": (step - start_step) * images_per_step,
                   "images_per_s": (step - start_step) * images_per_step / max(elapsed, 1e-9), "bf16": bf16,
                   "device": str(device), "world_size": dist.world_size,
                   "skipped_images": skipped.occurrences, "skipped_files": skipped.files,
                   "skipped": dict(list(skipped.reasons.items())[:100]),  # file -> reason, the first 100
                   "skipped_line": skipped.line() if skipped.occurrences else None,
                   "checkpoint": str(ckpt.latest), "stopped": stopped, **stats}
        log.write_summary(summary)
    report(summary, dist.is_main)
    D.cleanup()
    return summary
