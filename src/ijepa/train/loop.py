"""I-JEPA pretraining: the step (one screen, ``train_step``) and the loop around it (``train``).

One step, as data flows: images and (context ids, target ids) -> target encoder on all patches -> layer norm ->
gather the target blocks -> context encoder on the context patches only -> predictor (context tokens + mask
tokens at the target positions) -> smooth-L1 -> backward -> AdamW step -> EMA update of the target encoder.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import record_function

from .. import __version__
from ..config import Config, LossConfig, save_config
from ..device import bf16_supported, resolve_device
from ..masks import MultiBlockMaskSampler
from ..models import apply_masks, build_encoder, build_predictor
from ..optim import param_groups, set_lr
from . import distributed as D
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .inputs import build_pipeline, generator_for
from .monitor import collapse_stats, online_knn
from .schedules import Schedules


class NonFiniteLossError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------- the step


def vicreg_terms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance hinge and off-diagonal covariance of pooled features z (B, D), as in VICReg."""
    z = z.float()
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    var = F.relu(1.0 - std).mean()
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / max(z.shape[0] - 1, 1)
    off = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return var, off / z.shape[1]


def normalize_targets(h: torch.Tensor, batch_norm: str = "none") -> torch.Tensor:
    """The paper's per-token layer norm of the target encoder's output (B, N, D); optionally (ours) each
    position's batch statistics removed too ('center': mean, 'standardize': mean and std)."""
    h = F.layer_norm(h.float(), h.shape[-1:])
    if batch_norm != "none" and h.shape[0] > 1:
        h = h - h.mean(dim=0, keepdim=True)
        if batch_norm == "standardize":
            h = h / (h.std(dim=0, keepdim=True) + 1e-6)
    return h


def sigreg(z: torch.Tensor, num_slices: int = 256, t_max: float = 3.0, knots: int = 17) -> torch.Tensor:
    """SIGReg (LeJEPA, Balestriero & LeCun 2025): how far features z (B, D) are from an isotropic standard Gaussian.
    z is projected on ``num_slices`` random unit directions; on each, the Epps-Pulley statistic compares the
    empirical characteristic function with exp(-t^2/2) over t in [-t_max, t_max] (Gaussian-weighted, trapezoid
    rule), scaled by B as a test statistic; the result is the mean over directions."""
    z = z.float()
    dirs = torch.randn(z.shape[1], num_slices, device=z.device)
    s = z @ (dirs / dirs.norm(dim=0, keepdim=True))                     # (B, M)
    t = torch.linspace(0.0, t_max, knots, device=z.device)              # the integrand is even in t
    ts = s.unsqueeze(-1) * t                                            # (B, M, T)
    gauss = torch.exp(-0.5 * t * t)
    err = (torch.cos(ts).mean(0) - gauss).square() + torch.sin(ts).mean(0).square()  # (M, T)
    w = torch.full_like(t, t_max / (knots - 1))
    w[0] = w[-1] = w[0] / 2
    return z.shape[0] * 2.0 * (err * gauss * w).sum(-1).mean()


def jepa_loss(encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module, images: torch.Tensor,
              masks_enc: list[torch.Tensor], masks_pred: list[torch.Tensor],
              reg: LossConfig | None = None) -> torch.Tensor:
    """The paper's loss (``reg`` None or all zero), plus the optional terms of ``reg`` (ours, see LossConfig)."""
    reg = reg or LossConfig()
    B = images.shape[0]
    with torch.no_grad(), record_function("target_forward"):
        h = normalize_targets(target_encoder(images), reg.target_batch_norm)
        h = apply_masks(h, masks_pred)  # (npred·B, K, D)
        if len(masks_enc) > 1:  # one copy per context mask, in the predictor's output order
            h = h.view(len(masks_pred), 1, B, *h.shape[1:]).expand(-1, len(masks_enc), -1, -1, -1)
            h = h.reshape(-1, *h.shape[3:])
    with record_function("context_forward"):
        z = encoder(images, masks_enc)
    with record_function("predictor_forward"):
        loss = F.smooth_l1_loss(predictor(z, masks_enc, masks_pred).float(), h.float())
    pooled = z.mean(dim=1).float() if (reg.var_weight or reg.cov_weight or reg.sigreg_weight) else None
    if reg.var_weight or reg.cov_weight:
        var, cov = vicreg_terms(pooled)
        loss = loss + reg.var_weight * var + reg.cov_weight * cov
    if reg.sigreg_weight:
        loss = loss + reg.sigreg_weight * sigreg(pooled, reg.sigreg_slices)
    return loss


@dataclass
class TrainState:
    encoder: nn.Module            # may be DDP-wrapped
    predictor: nn.Module          # may be DDP-wrapped
    target_encoder: nn.Module
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    device: torch.device
    bf16: bool
    clip_grad: float | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    ema_pairs: tuple[list, list] = field(default_factory=lambda: ([], []))


def train_step(s: TrainState, images: torch.Tensor, masks_enc: list[torch.Tensor],
               masks_pred: list[torch.Tensor], step: int) -> torch.Tensor:
    lr, wd, momentum = s.schedules.lr_at(step), s.schedules.wd_at(step), s.schedules.momentum_at(step)
    set_lr(s.optimizer, lr, wd)
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.bf16):
        loss = jepa_loss(s.encoder, s.predictor, s.target_encoder, images, masks_enc, masks_pred, s.loss)
    s.optimizer.zero_grad(set_to_none=True)
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        if s.clip_grad:
            params = [p for g in s.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, s.clip_grad)
        s.optimizer.step()
    with torch.no_grad(), record_function("ema"):  # target <- m·target + (1 - m)·online, one fused call
        torch._foreach_lerp_(s.ema_pairs[0], s.ema_pairs[1], 1.0 - momentum)
    return loss.detach()


# ------------------------------------------------------------------------------------------------ the setup


def build_models(cfg: Config, input_spec: dict) -> tuple[nn.Module, nn.Module, nn.Module]:
    m = cfg.meta  # the size's own shape unless a meta.enc_* key overrides it
    overrides = {"depth": m.enc_depth, "embed_dim": m.enc_embed_dim, "num_heads": m.enc_num_heads,
                 "mlp_ratio": m.enc_mlp_ratio}
    encoder = build_encoder(m.model_name, patch_size=cfg.mask.patch_size, img_size=cfg.data.crop_size,
                            in_chans=cfg.data.in_chans, drop_path_rate=m.drop_path, init_std=m.init_std,
                            **{k: v for k, v in overrides.items() if v is not None})
    encoder.input_spec = dict(input_spec)
    predictor = build_predictor(encoder, predictor_embed_dim=m.pred_emb_dim, depth=m.pred_depth,
                                num_heads=m.pred_num_heads, one_pass=m.pred_one_pass)
    encoder.cpu_chunk_tokens = m.cpu_chunk_tokens  # training's setting (models built elsewhere keep their own)
    target = copy.deepcopy(encoder)
    for p in target.parameters():
        p.requires_grad_(False)
    for blk in target.blocks:  # the target encoder never drops paths
        blk.drop_path.p = 0.0
    return encoder, predictor, target


def build_optimizer(encoder: nn.Module, predictor: nn.Module, cfg: Config, device: torch.device
                    ) -> torch.optim.Optimizer:
    """AdamW over the encoder's then the predictor's groups (``ijepa.optim.param_groups``: biases and 1-D
    parameters take no weight decay, as in the reference)."""
    wd = cfg.optimization.weight_decay
    groups = param_groups(encoder, wd) + param_groups(predictor, wd)
    kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.optimization.lr, betas=cfg.optimization.betas, **kw)


class _Preemption:
    """SIGTERM / SIGUSR1 (what SLURM sends before pre-emption) set a flag; the loop saves and exits at the
    next step boundary instead of dying mid-write."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread (e.g. some notebook runners)
                    pass
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _truncate_csv(path: Path, start_step: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    step_col = rows[0].index("step")
    # monitor.csv's row at the checkpoint's own step describes the checkpointed weights: it stays
    last = start_step if path.name == "monitor.csv" else start_step - 1
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[step_col]) <= last]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


CSV_FIELDS = ["epoch", "step", "loss", "lr", "wd", "momentum", "ctx_tokens", "tgt_tokens", "step_ms",
              "images_per_s", "skipped"]


# ------------------------------------------------------------------------------------------------- the loop


def train(cfg: Config, out_dir: str | Path) -> dict:
    """Pretrain as ``cfg`` says, writing everything under ``out_dir``; returns a summary dict."""
    out = Path(out_dir)
    device = resolve_device(cfg.meta.device)
    dist = D.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.meta.threads:
        torch.set_num_threads(cfg.meta.threads)
    bf16 = cfg.meta.use_bfloat16 and bf16_supported(device)
    torch.manual_seed(cfg.meta.seed)  # identical initial weights on every rank
    tag = cfg.logging.write_tag
    latest_path = out / f"{tag}-latest.pth.tar"

    # -- data, masks, models, optimiser
    data = build_pipeline(cfg.data, dist, cfg.meta.seed, device)
    ipe = data.steps_per_epoch
    encoder, predictor, target = build_models(cfg, data.input_spec)
    grid = encoder.grid_size
    mask_sampler = MultiBlockMaskSampler(grid, cfg.mask)
    if cfg.meta.grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    encoder, predictor, target = encoder.to(device), predictor.to(device), target.to(device)
    optimizer = build_optimizer(encoder, predictor, cfg, device)
    schedules = Schedules.from_config(cfg.optimization, ipe)
    total_steps = cfg.optimization.epochs * ipe
    if cfg.optimization.max_steps:
        total_steps = min(total_steps, cfg.optimization.max_steps)

    # -- resume: a checkpoint that exists but cannot be read is an error, never a silent fresh start
    start_step, last_loss = 0, float("nan")
    resume_from = Path(cfg.meta.read_checkpoint) if cfg.meta.read_checkpoint else latest_path
    if cfg.meta.read_checkpoint or (cfg.meta.load_checkpoint and latest_path.exists()):
        ckpt = load_checkpoint(resume_from, map_location=device)
        missing = [k for k in ("encoder", "predictor", "target_encoder", "opt", "step") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{resume_from} lacks {', '.join(missing)}: not a resumable ijepa checkpoint")
        try:
            encoder.load_state_dict(ckpt["encoder"])
            predictor.load_state_dict(ckpt["predictor"])
            target.load_state_dict(ckpt["target_encoder"])
            optimizer.load_state_dict(ckpt["opt"])
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{resume_from} does not match this config's models: {e}") from None
        start_step, last_loss = int(ckpt["step"]), float(ckpt.get("loss", float("nan")))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        if dist.is_main:
            print(f"resumed from {resume_from} at step {start_step} (epoch {start_step // ipe})", flush=True)

    raw_encoder, raw_predictor = encoder, predictor
    fwd_encoder, fwd_predictor, fwd_target = encoder, predictor, target
    if dist.enabled:
        ids = [dist.local_rank] if device.type == "cuda" else None
        fwd_encoder, fwd_predictor = DDP(encoder, device_ids=ids), DDP(predictor, device_ids=ids)
    if cfg.meta.compile:
        fwd_encoder, fwd_predictor, fwd_target = (torch.compile(m) for m in (fwd_encoder, fwd_predictor, target))
    state = TrainState(fwd_encoder, fwd_predictor, fwd_target, optimizer, schedules, device, bf16,
                       cfg.optimization.clip_grad, cfg.loss,
                       (list(target.parameters()), list(raw_encoder.parameters())))

    # -- logging (rank 0 writes; every rank computes)
    log_csv = mon_csv = tb = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        new = not (out / "log.csv").exists() or start_step == 0
        if not new:  # rows logged after the checkpoint we resume from will be logged again: drop them
            for name in ("log.csv", "monitor.csv"):
                _truncate_csv(out / name, start_step)
        log_file = open(out / "log.csv", "w" if new else "a", newline="")
        log_csv = csv.DictWriter(log_file, CSV_FIELDS)
        if new:
            log_csv.writeheader()
        mon_file = open(out / "monitor.csv", "w" if new else "a", newline="")
        mon_csv = csv.DictWriter(mon_file, ["epoch", "step", "target_std", "rankme", "knn"])
        if new:
            mon_csv.writeheader()
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(out / "tensorboard"))
    monitor_images = data.monitor_batch()
    knn_sets = data.knn_sets() if cfg.logging.online_knn else None

    def checkpoint_state(step: int, loss: float) -> dict:
        return {
            "encoder": raw_encoder.state_dict(), "predictor": raw_predictor.state_dict(),
            "target_encoder": target.state_dict(), "opt": optimizer.state_dict(), "scaler": None,
            "epoch": step // ipe, "loss": loss, "batch_size": cfg.data.batch_size, "world_size": dist.world_size,
            "lr": schedules.lr_at(step), "format": "ijepa", "version": __version__, "step": step,
            "batch_in_epoch": step % ipe, "rng": rng_state(), "input_spec": data.input_spec,
            "arch": {"encoder": raw_encoder.arch_dict(), "predictor": raw_predictor.arch_dict()},
            "config": cfg.to_dict()}

    last_saved = [-1]

    def save(step: int, loss: float, keep_epoch: int | None = None) -> None:
        if step == last_saved[0]:
            return
        last_saved[0] = step
        if dist.is_main:
            st = checkpoint_state(step, loss)
            save_checkpoint(st, latest_path)
            if keep_epoch is not None:
                save_checkpoint(st, out / f"{tag}-ep{keep_epoch}.pth.tar")
        D.barrier()

    monitored: dict[int, dict] = {}

    def monitor(step: int, knn: bool = True) -> dict:
        """Collapse stats on the fixed batch; the online k-NN (3,000 forward passes, ~10x the rest) only when
        ``knn`` — at epoch ends and the end of the run, not at the every-N-steps checks."""
        if step in monitored:
            return monitored[step]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            stats = collapse_stats(target, monitor_images)
            if knn and knn_sets is not None:
                stats["knn"] = online_knn(target, *knn_sets)
        monitored[step] = stats
        if dist.is_main:
            mon_csv.writerow({"epoch": step // ipe, "step": step, **{k: f"{v:.5g}" for k, v in stats.items()}})
            mon_file.flush()
            if tb:
                for k, v in stats.items():
                    tb.add_scalar(f"monitor/{k}", v, step)
        return stats

    # Losses stay on the device and are read every log_freq steps: one host sync per log interval, not per step.
    pending: list[tuple[dict, torch.Tensor]] = []

    def flush() -> float:
        nonlocal last_loss
        if not pending:
            return last_loss
        losses = D.all_reduce_mean(torch.stack([t for _, t in pending])).tolist()
        for (row, _), value in zip(pending, losses):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at step {row['step']} (epoch {row['epoch']}); stopping. The last good "
                    f"checkpoint ({latest_path.name}, if any) was written before this and is untouched. Try a "
                    f"lower optimization.lr, optimization.clip_grad, or meta.use_bfloat16=false.")
            if log_csv:
                row["loss"] = f"{value:.6f}"
                log_csv.writerow(row)
                if tb:
                    tb.add_scalar("train/loss", value, row["step"])
                    tb.add_scalar("train/lr", float(row["lr"]), row["step"])
        if log_csv:
            log_file.flush()
        pending.clear()
        last_loss = losses[-1]
        return last_loss

    progress = None
    if dist.is_main and cfg.logging.progress:
        from tqdm.auto import tqdm
        progress = tqdm(total=total_steps, initial=start_step, desc="pretrain", unit="step", dynamic_ncols=True,
                        file=sys.stdout, mininterval=1.0)

    step, skipped_total, stop_reason = start_step, 0, None
    images_per_step = cfg.data.batch_size * dist.world_size
    t_start = time.perf_counter()
    last_stats: dict = {}
    try:
        with _Preemption() as preempt:
            while step < total_steps and stop_reason is None:
                epoch, start_batch = divmod(step, ipe)
                t_last = time.perf_counter()
                for images, n_skipped in data.epoch(epoch, start_batch):
                    skipped_total += n_skipped
                    if images is None:
                        continue
                    masks_enc, masks_pred = mask_sampler(images.shape[0],
                                                         generator_for(cfg.meta.seed, dist.rank, step, 1))
                    masks_enc = [m.to(device, non_blocking=True) for m in masks_enc]
                    masks_pred = [m.to(device, non_blocking=True) for m in masks_pred]
                    loss = train_step(state, images, masks_enc, masks_pred, step)
                    now = time.perf_counter()
                    dt, t_last = now - t_last, now
                    pending.append(({"epoch": epoch, "step": step, "lr": f"{schedules.lr_at(step):.6g}",
                                     "wd": f"{schedules.wd_at(step):.6g}",
                                     "momentum": f"{schedules.momentum_at(step):.6g}",
                                     "ctx_tokens": masks_enc[0].shape[1], "tgt_tokens": masks_pred[0].shape[1],
                                     "step_ms": f"{dt * 1e3:.1f}", "images_per_s": f"{images_per_step / dt:.1f}",
                                     "skipped": skipped_total}, loss))
                    step += 1
                    if step % cfg.logging.log_freq == 0 or step == total_steps:
                        value = flush()
                        if progress:
                            progress.update(step - progress.n)
                            post = {"loss": f"{value:.4f}", "lr": f"{schedules.lr_at(step):.2e}",
                                    "img/s": f"{images_per_step / dt:.0f}"}
                            if last_stats:
                                post["rankme"] = f"{last_stats['rankme']:.1f}"
                                if "knn" in last_stats:
                                    post["knn"] = f"{100 * last_stats['knn']:.1f}%"
                            progress.set_postfix(post, refresh=False)
                    # epoch ends and the last step get the full check (with k-NN) below
                    if (cfg.logging.monitor_freq and step % cfg.logging.monitor_freq == 0 and step % ipe
                            and step < total_steps):
                        last_stats = {**last_stats, **monitor(step, knn=False)}
                    every = cfg.logging.checkpoint_every_steps
                    if every and step % every == 0 and step % ipe:
                        save(step, flush())
                    if preempt.requested:
                        stop_reason = f"received {preempt.requested}"
                        break
                    if step >= total_steps:
                        break
                if stop_reason is None and step % ipe == 0:  # a whole epoch done
                    done_epoch = step // ipe
                    last_stats = {**last_stats, **monitor(step)}
                    keep = cfg.logging.checkpoint_freq and done_epoch % cfg.logging.checkpoint_freq == 0
                    save(step, flush(), keep_epoch=done_epoch if keep else None)
            final_loss = flush()
            save(step, final_loss)
            stats = monitor(step) if stop_reason is None else {}
    finally:
        if progress:
            progress.close()
        if dist.is_main:
            log_file.close()
            mon_file.close()
            if tb:
                tb.close()
    elapsed = time.perf_counter() - t_start
    summary = {"steps": step, "epochs": step / ipe, "final_loss": final_loss, "minutes": elapsed / 60,
               "images_seen": (step - start_step) * images_per_step,
               "images_per_s": (step - start_step) * images_per_step / max(elapsed, 1e-9),
               "bf16": bf16, "device": str(device), "world_size": dist.world_size, "skipped_images": skipped_total,
               "checkpoint": str(latest_path), "stopped": stop_reason, **stats}
    if dist.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if stop_reason:
            print(f"{stop_reason}: saved {latest_path} at step {step}; resume with the same command", flush=True)
        if skipped_total:
            print(f"skipped {skipped_total} unreadable images (named in the warnings above)", flush=True)
    D.cleanup()
    return summary
