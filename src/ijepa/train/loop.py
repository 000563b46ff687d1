"""I-JEPA pretraining: one optimisation step (``train_step``) and the run around it (``train``).

``build_run`` makes the run's parts once, top to bottom, each complete when made: device and process group ->
the run folder's lock and the checkpoint a resume continues from (a changed config is refused here, before any
work; ``runfolder.py``) -> data -> model -> optimizer -> scaler -> horizon and schedules -> checkpointer.
``train`` then runs the loop. The parts live beside this file: the model and its loss in
``ijepa.py`` and ``losses.py``, the run's length in ``horizon.py``, the schedules in ``schedules.py``, checkpoints
in ``checkpoint.py``, the logs in ``runlog.py``, the collapse checks in ``monitor.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..data.decode import SkipTally
from ..device import flush_denormals, resolve_device
from ..io import atomic_write_json
from ..masks import MultiBlockMaskSampler
from ..optim import set_lr
from ..precision import Precision, backward_step, resolve_precision
from ..seeding import generator_for
from . import distributed as D
from . import fsdp as F
from .checkpoint import Checkpointer, read_resume
from .checkpoint_writer import CheckpointTimer
from .horizon import Horizon, TimedHorizon, build_horizon
from .ijepa import IJEPA
from .inputs import build_pipeline
from .losses import describe_loss
from .monitor import Monitor
from .runfolder import config_change, no_space, own_run_folder
from .runlog import RunLog, step_row
from .schedules import Schedules

__all__ = ["Interrupted", "Run", "TrainState", "build_run", "exit_status", "train", "train_step"]


@dataclass
class TrainState:
    """What one step needs: the model, what computes its loss (DDP(model) when distributed, else the model),
    the optimizer, fp16's loss scaler (a disabled one otherwise), the schedules and the precision."""

    model: IJEPA
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedules: Schedules
    precision: Precision
    clip_grad: float | None = None


def train_step(s: TrainState, images: torch.Tensor, masks_enc: list[torch.Tensor],
               masks_pred: list[torch.Tensor], step: int) -> torch.Tensor:
    """Scheduled lr and weight decay -> loss -> backward -> (clip) -> AdamW step -> EMA update of the target.
    In fp16 the loss is scaled and a step with inf/NaN gradients skipped (``backward_step``); bf16 and fp32 run
    the plain step, bit for bit."""
    set_lr(s.optimizer, s.schedules.lr_at(step), s.schedules.wd_at(step))
    with s.precision.autocast():
        loss = s.forward(images, masks_enc, masks_pred)
    s.optimizer.zero_grad(set_to_none=True)
    backward_step(loss, s.optimizer, s.scaler, clip_grad=s.clip_grad)
    s.model.update_target(s.schedules.momentum_at(step))
    return loss.detach()


class Interrupted(KeyboardInterrupt):
    """A second stop signal while a run is stopping: stop at once. ``exit_code`` is the shell's 128 + the signal's
    number."""

    def __init__(self, signum: int):
        super().__init__(f"a second {signal.Signals(signum).name} while the run was saving")
        self.exit_code = 128 + signum


# The signals that stop a run at the next step boundary, with a checkpoint.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


class Preemption:
    """SIGINT (Ctrl-C), SIGTERM and SIGUSR1 (what SLURM sends before pre-emption) set a flag; the loop saves and
    exits at the next step boundary instead of dying mid-write. A second one raises ``Interrupted`` there and
    then, so a save can still be cut short (atomic writes keep the checkpoint before it). Loader workers forked
    meanwhile inherit the handler and ignore the signals (a terminal's Ctrl-C reaches them too): the main process
    stops them. A signal the process started with ignored stays ignored (a script's background job ignores SIGINT,
    so that a Ctrl-C meant for the script leaves it running)."""

    def __init__(self, is_main: bool = True):
        self.requested: str | None = None
        self.is_main = is_main
        self._old = {}
        self._pid = os.getpid()

    def __enter__(self) -> Preemption:
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None or signal.getsignal(sig) is signal.SIG_IGN:
                continue
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners)
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked loader worker
            return
        if self.requested is not None:
            raise Interrupted(signum)
        self.requested = f"received {signal.Signals(signum).name}"
        if self.is_main:  # os.write, not print: the signal may have interrupted a print, which cannot re-enter
            os.write(2, f"ijepa: {self.requested}: stopping after this step with a checkpoint (send it again to "
                        "stop at once)\n".encode())

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def exit_status(summary: dict) -> int:
    """The status ``ijepa train`` exits with: 0 for a run that ended by itself, 128 + the signal's number for one
    a signal stopped (the shell's convention: 130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1), so that
    ``ijepa train ... && ijepa eval ...`` evaluates no half-trained model."""
    stopped = summary.get("stopped")
    return 128 + signal.Signals[stopped.removeprefix("received ")] if stopped else 0


# ------------------------------------------------------------------------------------------------ the build


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
    return device, dist, resolve_precision(cfg.meta.precision, device)


def distribute(model: IJEPA, cfg: Config, dist: D.DistInfo, device: torch.device) -> nn.Module:
    """What computes the loss: ``model``, its compiled view (meta.compile), and that in DDP when distributed."""
    forward = model.compiled() if cfg.meta.compile else model
    if not dist.enabled or cfg.meta.parallel == "fsdp":  # FSDP wraps the networks in place (fsdp.shard_model)
        return forward
    return DDP(forward, device_ids=[dist.local_rank] if device.type == "cuda" else None)


@dataclass
class Run:
    """A pretraining run's parts, built once by :func:`build_run`."""

    cfg: Config
    out: Path
    device: torch.device
    dist: D.DistInfo
    data: object  # an InMemoryPipeline or LoaderPipeline (inputs.py)
    masks: MultiBlockMaskSampler
    state: TrainState
    horizon: Horizon
    ckpt: Checkpointer
    monitor: Monitor
    start_step: int
    last_loss: float
    clock: Callable[[], float]
    t_start: float
    config_change: dict | None  # what a resume changed (runfolder.config_change)


def build_run(cfg: Config, out: str | Path, hold: contextlib.ExitStack, *,
              clock: Callable[[], float] = time.perf_counter, started: float | None = None) -> Run:
    """Every part of a run, each complete when made; a resumed run's state loaded into them. ``hold`` keeps the
    run folder's lock until the run ends."""
    t_start = clock() if started is None else started  # a time limit counts from here
    device, dist, precision = setup_device(cfg)
    out = Path(out)
    hold.enter_context(own_run_folder(out, dist, device))
    sharded = cfg.meta.parallel == "fsdp"
    tag, m = cfg.logging.write_tag, cfg.meta
    resume = (F.read_resume(out, tag, m.read_checkpoint, m.load_checkpoint) if sharded
              else read_resume(out, tag, m.read_checkpoint, m.load_checkpoint, device))
    change = config_change(resume[1].get("config"), cfg, int(resume[1]["step"]), resume[0]) if resume else None
    data = build_pipeline(cfg.data, dist, cfg.meta.seed, device)
    ipe = data.steps_per_epoch
    model = IJEPA.from_config(cfg, data.input_spec).to(device)
    if sharded and dist.enabled:  # before the optimizer: sharding replaces the parameters
        F.shard_model(model, precision, device)
    masks = MultiBlockMaskSampler(model.grid_size, cfg.mask)
    optimizer = model.configure_optimizer(cfg.optimization, device.type)
    scaler = precision.grad_scaler()
    horizon = build_horizon(cfg.optimization, ipe, t_start=t_start, clock=clock,
                            slowest=lambda s: D.slowest(s, device),
                            resumed=resume[1].get("horizon") if resume else None,
                            step=int(resume[1]["step"]) if resume else 0)
    schedules = Schedules.from_config(cfg.optimization, ipe, horizon)
    ckpt = (F.ShardedCheckpointer if sharded else Checkpointer)(
                        out, cfg.logging.write_tag, model, optimizer, scaler, schedules, steps_per_epoch=ipe,
                        is_main=dist.is_main, info={"batch_size": cfg.data.batch_size, "world_size": dist.world_size,
                                                    "input_spec": data.input_spec.to_dict(), "config": cfg.to_dict()},
                        timer=CheckpointTimer(cfg.logging.checkpoint_every_minutes, clock,
                                              lambda due: D.from_main(due, device)))
    if hasattr(data, "state_dict"):  # a streamed dataset: its position is kept in the checkpoint (data/hf_stream.py)
        ckpt.data_state = data.state_dict
        data.load_state_dict(resume[1].get("data_state") if resume else None)
    start_step, last_loss = ckpt.restore(*resume) if resume else (0, math.nan)
    state = TrainState(model, distribute(model, cfg, dist, device), optimizer, scaler, schedules, precision,
                       cfg.optimization.clip_grad)
    knn = data.knn_sets() if cfg.logging.online_knn else None
    monitor = Monitor(model.target_encoder, data.monitor_batch(), knn, precision)
    return Run(cfg, out, device, dist, data, masks, state, horizon, ckpt, monitor, start_step, last_loss, clock,
               t_start, change)


# ------------------------------------------------------------------------------------------------- the loop


def train(cfg: Config, out_dir: str | Path, *, clock: Callable[[], float] = time.perf_counter,
          started: float | None = None) -> dict:
    """Pretrain as ``cfg`` says, writing everything under ``out_dir`` (``ijepa.pretrain`` is this function).

    A run folder that holds a checkpoint is resumed from it (``meta.load_checkpoint``), exactly where it left off.

    Args:
        cfg: the run's config (``ijepa.load_config``).
        out_dir: the run folder: ``config.yaml``, ``log.csv``, ``monitor.csv``, ``summary.json``, checkpoints and,
            with a time limit, ``horizon.json``.
        clock: times a run with a time limit (a scripted one makes its plan reproducible in tests).
        started: when that limit began, on ``clock`` (default: now; the ``ijepa`` command passes its process's
            start, so its start-up counts too).

    Returns:
        dict: The run's summary, as written to ``summary.json``: steps, epochs, final loss, minutes, images seen and per
        second, precision, the horizon and its planned and configured steps, skipped files, the last
        checkpoint and the final collapse checks; ``complete`` says whether it reached its last planned step,
        ``stopped`` which signal stopped it first (``exit_status``).

    Raises:
        ijepa.errors.RunFolderInUseError: another live run holds ``out_dir``.
        ijepa.errors.ConfigChangedError: the checkpoint being resumed was written with other values of keys
            that change the run (``meta.allow_config_change`` lets it go on).
        ijepa.errors.DiskFullError: no space left while writing; the checkpoint before is intact.
    """
    with contextlib.ExitStack() as hold:  # the run folder's lock, until the run ends
        summary = run_steps(build_run(cfg, out_dir, hold, clock=clock, started=started))
    D.cleanup()
    return summary


def run_steps(r: Run) -> dict:
    """The loop: steps, checks and checkpoints from the resumed step to the horizon's end, or to a stop signal;
    then the summary."""
    cfg, clock = r.cfg, r.clock
    lg, horizon = cfg.logging, r.horizon
    ipe, step, skipped, stopped = r.data.steps_per_epoch, r.start_step, SkipTally(), None
    images_per_step = cfg.data.batch_size * r.dist.world_size
    if r.dist.is_main:
        print(describe_loss(cfg.loss), flush=True)
    with RunLog(r.out, cfg, is_main=r.dist.is_main, start_step=step, total_steps=horizon.end,
                steps_per_epoch=ipe, checkpoint_name=r.ckpt.latest.name, last_loss=r.last_loss,
                config_change=r.config_change) as log, Preemption(r.dist.is_main) as preempt:
        start_timing(r, log)
        t_loop = clock()
        while not horizon.done(step) and stopped is None:
            epoch, start_batch = divmod(step, ipe)
            t_last = clock()
            for images, skipped_here in r.data.epoch(epoch, start_batch):
                skipped.add(skipped_here)
                if images is None:
                    continue
                enc, pred = r.masks(images.shape[0], generator_for("mask", cfg.meta.seed, r.dist.rank, step))
                enc = [m.to(r.device, non_blocking=True) for m in enc]
                pred = [m.to(r.device, non_blocking=True) for m in pred]
                loss = train_step(r.state, images, enc, pred, step)
                now = clock()
                log.record(step_row(epoch, step, r.state.schedules, enc, pred, now - t_last, images_per_step,
                                    skipped.occurrences), loss)
                step, dt, t_last = step + 1, now - t_last, now
                if horizon.after_step(step, now, dt) is not None:
                    replanned(r, log)
                between_steps(r, log, step)
                stopped = preempt.requested
                if stopped or horizon.done(step):
                    break
            if stopped is None and step % ipe == 0:  # a whole epoch done: the full check, then the checkpoint
                log.monitor(step, r.monitor(step))
                keep = lg.checkpoint_freq and (step // ipe) % lg.checkpoint_freq == 0
                r.ckpt.save(step, log.flush(), keep_epoch=step // ipe if keep else None)
        return finish(r, log, step, stopped, skipped, clock() - t_loop, images_per_step)


def start_timing(r: Run, log: RunLog) -> None:
    """A timed run starts measuring its steps; once they run at full speed it times one full check beside them
    (what it reserves for each check to come), logged as that step's check. Until then a check is taken to cost
    its images' forward passes over three batches' (a step: the target's forward, the context's forward and
    backward)."""
    if not isinstance(r.horizon, TimedHorizon):
        return

    def time_check(step: int) -> float:
        with torch.random.fork_rng(devices=[]):  # the check draws nothing the run would see
            t0 = r.horizon.clock()
            log.monitor(step, r.monitor(step))
            return r.horizon.clock() - t0

    knn = r.monitor.knn_sets
    images = len(r.monitor.images) + (len(knn[0]) + len(knn[2]) if knn is not None else 0)
    r.horizon.begin(r.start_step, time_check, images / (3 * r.cfg.data.batch_size))
    if r.dist.is_main:
        h = r.horizon
        print(f"time limit: {h.minutes:g} min ({h.seconds_left() / 60:.1f} left to train): at most the configured "
              f"{h.nominal} steps, as many as fit here, re-planned from the measured steps as the run goes "
              f"(horizon.json)", flush=True)


def replanned(r: Run, log: RunLog) -> None:
    """A re-plan: the progress bar's length and horizon.json follow it."""
    log.set_total(r.horizon.end)
    if r.dist.is_main:
        with no_space(r.out / "horizon.json", r.ckpt.latest):
            atomic_write_json(r.out / "horizon.json", r.horizon.to_json())


def between_steps(r: Run, log: RunLog, step: int) -> None:
    """The console line, the every-N-steps collapse check and checkpoint, at their intervals; every log_freq
    steps, the checkpoint due by time. Mid-epoch checkpoints are written in the background."""
    lg, ipe, done = r.cfg.logging, r.data.steps_per_epoch, r.horizon.done(step)
    if step % lg.log_freq == 0 or done:
        log.flush(show_lr=r.state.schedules.lr_at(step))
    # epoch ends and the last step get the full check (with the k-NN) in train()
    if lg.monitor_freq and step % lg.monitor_freq == 0 and step % ipe and not done:
        log.monitor(step, r.monitor(step, knn=False))
    if lg.checkpoint_every_steps and step % lg.checkpoint_every_steps == 0 and step % ipe:
        r.ckpt.save(step, log.flush(), background=True)
    elif step % lg.log_freq == 0 and step % ipe and not done and r.ckpt.timer.due():  # the same steps on every rank
        r.ckpt.save(step, log.flush(), background=True)


def finish(r: Run, log: RunLog, step: int, stopped: str | None, skipped: SkipTally, seconds: float,
           images_per_step: int) -> dict:
    """The final checkpoint, check and summary."""
    final_loss = log.flush()
    r.ckpt.save(step, final_loss)
    stats = {} if stopped else r.monitor(step)
    if not stopped:
        log.monitor(step, stats)
    if r.dist.is_main and r.horizon.kind != "fixed":
        with no_space(r.out / "horizon.json", r.ckpt.latest):
            atomic_write_json(r.out / "horizon.json", r.horizon.to_json())
    done = step - r.start_step
    summary = {"steps": step, "epochs": step / r.data.steps_per_epoch, "final_loss": final_loss,
               "minutes": seconds / 60, "images_seen": done * images_per_step,
               "images_per_s": done * images_per_step / max(seconds, 1e-9),
               "precision": str(r.state.precision), "horizon": r.horizon.kind, "planned_steps": r.horizon.total,
               "configured_steps": r.horizon.nominal, "device": str(r.device), "world_size": r.dist.world_size,
               "skipped_images": skipped.occurrences, "skipped_files": skipped.files,
               "skipped": dict(list(skipped.reasons.items())[:100]),  # file -> reason, the first 100
               "skipped_line": skipped.line() if skipped.occurrences else None,
               "wall_minutes": (r.clock() - r.t_start) / 60, "checkpoint": str(r.ckpt.latest), "stopped": stopped,
               "complete": stopped is None and step >= r.horizon.total, **stats}
    log.write_summary(summary)
    if r.dist.is_main and isinstance(r.horizon, TimedHorizon) and not stopped:
        print(f"time limit: trained {step} of the {r.horizon.nominal} configured steps in "
              f"{r.horizon.elapsed() / 60:.2f} of {r.horizon.minutes:g} min ({len(r.horizon.record) - 1} re-plans, "
              "horizon.json)", flush=True)
    if r.dist.is_main and stopped:
        print(f"{stopped}: saved {summary['checkpoint']} at step {step}; resume with the same command (exit status "
              f"{exit_status(summary)})", flush=True)
    if r.dist.is_main and skipped.occurrences:
        print(summary["skipped_line"], flush=True)
    return summary
