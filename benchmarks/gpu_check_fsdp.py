"""benchmarks/gpu_check.py's ``fsdp`` section: the project's training step under FSDP2 (``meta.parallel: fsdp``,
``ijepa.train.fsdp.shard_model``) against the same step under DDP, on one device in a process group of one (nccl
on the GPU, gloo on the CPU in --smoke): the same model (train:0's size), weights, images and masks.

  agreement  fp32 (no tf32) losses of a few steps, FSDP2 against DDP: the same arithmetic in another wrapping
  speed      bf16 images/s and step ms of each (FSDP2's per-block gathers and reduce-scatters cost time even
             with one rank; the table shows how much), peak memory of each on the GPU
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from gpu_check_sections import Recorder, Shapes, peak_mib, reference_config, sync


def _state(cfg, device: torch.device, kind: str, dtype: str):
    """A TrainState as ``ijepa train`` builds it for meta.parallel=kind, from seed 0."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ijepa.precision import Precision
    from ijepa.train.fsdp import shard_model
    from ijepa.train.horizon import Horizon
    from ijepa.train.ijepa import IJEPA
    from ijepa.train.loop import TrainState
    from ijepa.train.schedules import Schedules

    torch.manual_seed(0)
    c = cfg.data.crop_size
    model = IJEPA.from_config(cfg, {"image_size": (c, c), "in_chans": 3, "mean": (0.5,) * 3, "std": (0.5,) * 3})
    model = model.to(device)
    precision = Precision(dtype, device.type, "fixed by the check")
    if kind == "fsdp":
        shard_model(model, precision, device)
    opt = model.configure_optimizer(cfg.optimization, device.type)
    forward = model if kind == "fsdp" else DDP(model, device_ids=[0] if device.type == "cuda" else None)
    schedules = Schedules.from_config(cfg.optimization, 1000, Horizon(cfg.optimization.epochs * 1000))
    return TrainState(model, forward, opt, precision.grad_scaler(), schedules, precision, cfg.optimization.clip_grad)


def _inputs(cfg, batch: int, n: int, device: torch.device) -> list:
    from ijepa.masks import MultiBlockMaskSampler

    c = cfg.data.crop_size
    sampler = MultiBlockMaskSampler((c // cfg.mask.patch_size, c // cfg.mask.patch_size), cfg.mask)
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        enc, pred = sampler(batch, g)
        x = torch.randn(batch, 3, c, c, generator=g).to(device)
        out.append((x, [t.to(device) for t in enc], [t.to(device) for t in pred]))
    return out


def _losses(cfg, device, kind: str, dtype: str, inputs: list,
            warmup: int = 1) -> tuple[list[float], float, float | None]:
    """(losses, seconds per step after the first ``warmup``, peak MiB) of ``kind`` over ``inputs``."""
    from ijepa.train.loop import train_step

    s = _state(cfg, device, kind, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, t0 = [], 0.0
    for i, (x, enc, pred) in enumerate(inputs):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        losses.append(train_step(s, x, enc, pred, i))
    sync(device)
    dt = (time.perf_counter() - t0) / max(1, len(inputs) - warmup)
    peak = peak_mib(device)
    del s
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [float(v) for v in losses], dt, peak


def sec_fsdp(sh: Shapes, rec: Recorder, _: dict) -> None:
    arch, patch, img, batch = sh.train[0]
    device = torch.device(sh.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda":
            torch.cuda.set_device(0)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{Path(tmp) / 'pg'}",
                                rank=0, world_size=1)
        try:
            cfg = reference_config(sh, arch, patch, img, batch, ["optimization.clip_grad=1.0"])
            rec.update(arch=arch, patch=patch, img=img, batch=batch, world_size=1, backend=dist.get_backend())
            inputs = _inputs(cfg, batch, max(2, min(5, sh.precision_steps)), device)
            fp32 = {k: _losses(cfg, device, k, "fp32", inputs)[0] for k in ("ddp", "fsdp")}
            a, b = torch.tensor(fp32["ddp"]), torch.tensor(fp32["fsdp"])
            rel = float(((a - b).abs() / a.abs().clamp_min(1e-12)).max())
            rec.update(ddp_fp32_losses=fp32["ddp"], fsdp_fp32_losses=fp32["fsdp"], max_rel_diff=rel,
                       agree=rel < 1e-4, criterion="fp32 losses within 1e-4 relative at every step")
            timed = _inputs(cfg, batch, sh.warmup_steps + sh.timed_steps, device)
            for kind in ("ddp", "fsdp"):
                _, dt, peak = _losses(cfg, device, kind, "bf16", timed, warmup=sh.warmup_steps)
                rec.update(**{f"{kind}_images_per_s": batch / dt, f"{kind}_step_ms": 1000 * dt,
                              f"{kind}_peak_mem_mib": peak})
            if not rec.data["agree"]:
                raise RuntimeError(f"FSDP2 and DDP fp32 losses differ by {rel:.2e} (relative): {fp32}")
        finally:
            dist.destroy_process_group()
