"""A stochastic decoder: draws *samples* of the pixels that a grid of target-encoder tokens could stand for.

The deterministic :class:`~ijepa.viz.decoder.PixelDecoder` draws the one image closest on average to every image
a representation could stand for: a blur wherever the representation is unsure. This decoder is a conditional
generative model of the same mapping, so that ``viz predict --samples K`` can show the I-JEPA paper's picture
(section 8: what stays the same across samples is what the representation holds, what varies is what it leaves
open).

Condition: the whole token grid in the space the predictor regresses (``decoder_input``): the true target tokens
outside the hidden box, and for the box either the predictor's output or the true tokens. The decoder sees no
pixels, so every pixel of a sample, context included, is drawn from the representation (the swap test of
``viz predict --measure`` checks that the box's tokens, not the context, decide what is drawn there).

The paper's decoder (RCDM) read the *average-pooled* box representation. Pooling here is a training-time
corruption instead: the box's tokens of each training image are pulled part of the way toward their mean over
the box and toward the per-position mean token (random amounts), so the decoder learns what a less specific box
representation leaves open; the exact tokens stay the most frequent case, so on true features it stays as
faithful as the deterministic decoder. It never sees a prediction in training.

Generative process: conditional flow matching (a straight path from noise to the image, velocity regression,
Euler sampling), or DDPM with DDIM sampling through ``diffusers`` (optional dependency: the ``diffusion``
extra); ``benchmarks/stochastic_decoder.py`` compares them. Network (:class:`GridDenoiser`): the noisy image is
cut into patch tokens and added to the embedded condition tokens, residual 3x3 convolutions over the token grid
scaled and shifted by the noise level (FiLM), and a linear map back to each patch's pixels followed by two pixel
convolutions that also see the noisy image. It runs at the token grid's resolution, so on two CPU cores it
trains many times faster than a pixel-resolution UNet.

Saved as ``.safetensors`` with the architecture, process, encoder input spec, training statistics and the
encoder's fingerprint (its features of a fixed probe input): :func:`check_fits` refuses another encoder's
features with a message that says what differs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io import read_safetensors, write_safetensors
from ..masks import MaskConfig
from ..models.vit import inference_forward
from ..optim import param_groups, set_lr, warmup_cosine
from ..precision import Precision, resolve_precision
from . import VizError
from .decoder import decoder_input, psnr
from .features import encode, encoder_input
from .predict import sample_boxes

STOCHASTIC_FORMAT = "ijepa-stochastic-decoder"
PROCESSES = ("flow", "ddpm")
_DDPM_STEPS = 1000  # training timesteps of the DDPM schedule


# ---------------------------------------------------------------------------------------------------- network


@dataclass
class StochasticArch:
    embed_dim: int
    grid_size: tuple[int, int]
    patch_size: int
    in_chans: int
    hidden: int = 128
    depth: int = 4
    pixel_channels: int = 16
    process: str = "flow"


def _timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of noise levels ``t`` in [0, 1] (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (t.float()[:, None] * 1000.0) * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _FiLMBlock(nn.Module):
    """Residual block of two 3x3 convolutions over the token grid; the noise level scales and shifts its input."""

    def __init__(self, dim: int, emb: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, dim, affine=False)
        self.film = nn.Linear(emb, 2 * dim)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.conv2(F.gelu(self.conv1(F.gelu(h))))


class GridDenoiser(nn.Module):
    """(noisy images (B, C, H, W), noise levels t (B,) in [0, 1], condition tokens (B, N, D)) -> the clean image
    (B, C, H, W) on the [-1, 1] scale (x-prediction; the samplers turn it into a velocity or a DDIM step).

    Also holds ``token_mean`` (N, D), the per-position mean condition token of the training images (the
    corruption's anchor, saved with the weights)."""

    def __init__(self, embed_dim: int, grid_size: Sequence[int], patch_size: int, in_chans: int, hidden: int = 128,
                 depth: int = 4, pixel_channels: int = 16, process: str = "flow"):
        super().__init__()
        if process not in PROCESSES:
            raise VizError(f"process must be one of {', '.join(PROCESSES)}, got {process!r}")
        self.arch = StochasticArch(int(embed_dim), (int(grid_size[0]), int(grid_size[1])), int(patch_size),
                                   int(in_chans), int(hidden), int(depth), int(pixel_channels), process)
        a = self.arch
        n, pp = a.grid_size[0] * a.grid_size[1], a.patch_size * a.patch_size
        self.register_buffer("token_mean", torch.zeros(n, a.embed_dim))
        self.cond = nn.Sequential(nn.Linear(a.embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.noisy = nn.Linear(pp * a.in_chans, hidden)
        emb = 4 * 32
        self.time = nn.Sequential(nn.Linear(64, emb), nn.GELU(), nn.Linear(emb, emb))
        self.blocks = nn.ModuleList(_FiLMBlock(hidden, emb) for _ in range(depth))
        self.to_pixels = nn.Linear(hidden, pp * pixel_channels)
        self.pixel1 = nn.Conv2d(pixel_channels + a.in_chans, pixel_channels, 3, padding=1)
        self.pixel2 = nn.Conv2d(pixel_channels, a.in_chans, 3, padding=1)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        a = self.arch
        (gh, gw), p = a.grid_size, a.patch_size
        b, c = x.shape[:2]
        return x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        a = self.arch
        (gh, gw), p = a.grid_size, a.patch_size
        b, n, _ = cond.shape
        if n != gh * gw:
            raise ValueError(f"expected {gh * gw} condition tokens ({gh}x{gw} grid), got {n}")
        h = self.cond(cond) + self.noisy(self._patchify(x_t))
        h = h.transpose(1, 2).reshape(b, -1, gh, gw)
        emb = self.time(_timestep_features(t, 64))
        for blk in self.blocks:
            h = blk(h, emb)
        h = self.to_pixels(h.flatten(2).transpose(1, 2))  # (B, N, p·p·c)
        h = h.view(b, gh, gw, p, p, a.pixel_channels).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, gh * p, gw * p)
        h = torch.cat([h, x_t.to(h.dtype)], dim=1)
        return self.pixel2(F.gelu(self.pixel1(F.gelu(h))))


# ----------------------------------------------------------------------------------------- generative process


def _ddpm_schedulers():
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError as e:
        raise VizError("process 'ddpm' uses the diffusers package: pip install 'ijepa[diffusion]' (or use the "
                       "default process, flow)") from e
    kw = {"num_train_timesteps": _DDPM_STEPS, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample",
          "clip_sample": False}
    return DDPMScheduler(**kw), DDIMScheduler(**kw)


def _pixels_to_model(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1  # [0, 1] pixels -> [-1, 1], the scale the noise is drawn at


def training_pair(process: str, images: torch.Tensor, g: torch.Generator, schedulers=None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy input, noise level t in [0, 1], regression target) for a batch of [0, 1] images. The target is
    the clean image for both processes (x-prediction): with a condition that pins most pixels, the network's
    job is then mostly the deterministic decoder's regression, which trains in minutes, instead of a velocity
    or noise that changes with every draw."""
    x = _pixels_to_model(images)
    noise = torch.randn(x.shape, generator=g, device=x.device)
    if process == "flow":  # straight path, t = 0 noise, t = 1 data
        t = torch.rand(len(x), generator=g, device=x.device)
        tt = t[:, None, None, None]
        return (1 - tt) * noise + tt * x, t, x
    train_sched, _ = schedulers
    steps = torch.randint(0, _DDPM_STEPS, (len(x),), generator=g, device=x.device)
    return train_sched.add_noise(x, noise, steps), steps.float() / _DDPM_STEPS, x


# ---------------------------------------------------------------------------------------------------- corruption


def box_masks(boxes: Sequence[Sequence[int]], grid: Sequence[int]) -> torch.Tensor:
    """(B, N) bool: which grid tokens each (r0, c0, h, w) box covers."""
    gh, gw = int(grid[0]), int(grid[1])
    m = torch.zeros(len(boxes), gh, gw, dtype=torch.bool)
    for i, (r0, c0, h, w) in enumerate(boxes):
        m[i, r0:r0 + h, c0:c0 + w] = True
    return m.flatten(1)


def corrupt_box_tokens(tokens: torch.Tensor, masks: torch.Tensor, token_mean: torch.Tensor, pool: torch.Tensor,
                       shrink: torch.Tensor) -> torch.Tensor:
    """Make the box's tokens less specific, the way a prediction from context is: each token's deviation from
    the per-position mean is pulled toward the box's mean deviation (``pool`` in [0, 1] per image: 1 keeps only
    the pooled vector, the paper's condition) and scaled by ``shrink`` (1 keeps its size, 0 leaves the
    per-position mean: nothing about this image)."""
    dev = tokens - token_mean
    m = masks[..., None].to(tokens.dtype)
    pooled = (dev * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    mixed = token_mean + shrink[:, None, None] * ((1 - pool[:, None, None]) * dev + pool[:, None, None] * pooled)
    changed = masks & ((pool > 0) | (shrink < 1))[:, None]  # uncorrupted images keep their tokens bit for bit
    return torch.where(changed[..., None], mixed, tokens)


@dataclass
class Corruption:
    """How often and how much the box tokens are corrupted in training (see :func:`corrupt_box_tokens`)."""

    prob: float = 0.75          # of training images whose box tokens are corrupted (the rest: exact tokens)
    pool: tuple[float, float] = (0.0, 1.0)
    shrink: tuple[float, float] = (0.3, 1.0)

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        on = torch.rand(n, generator=g) < self.prob
        u = torch.rand(2, n, generator=g)
        pool = torch.where(on, self.pool[0] + u[0] * (self.pool[1] - self.pool[0]), torch.zeros(n))
        shrink = torch.where(on, self.shrink[0] + u[1] * (self.shrink[1] - self.shrink[0]), torch.ones(n))
        return pool, shrink


# ------------------------------------------------------------------------------------------------------ training


@dataclass
class StochasticStats:
    steps: int
    seconds: float
    train_images: int
    val_images: int
    val_loss: float
    sample_psnr: float       # one sample per held-out image, conditioned on its true tokens
    mean_image_psnr: float   # the training set's mean image, the floor


def fingerprint(target_encoder: nn.Module, n: int = 4) -> torch.Tensor:
    """The encoder's normalised, mean-pooled features (n, D) of a fixed probe input (seeded noise images): two
    encoders that give the same features give the same fingerprint, whatever file they came from."""
    spec = target_encoder.input_spec
    h, w = spec["image_size"]
    probe = torch.rand(n, int(spec["in_chans"]), int(h), int(w), generator=torch.Generator().manual_seed(1234))
    return decoder_input(encode(target_encoder, probe)).mean(1)


def train_stochastic_decoder(target_encoder: nn.Module, train_images: torch.Tensor, *,
                             val_images: torch.Tensor | None = None, steps: int | None = None,
                             minutes: float | None = None, batch_size: int = 128, lr: float = 2e-3,
                             hidden: int = 128, depth: int = 4, pixel_channels: int = 16, process: str = "flow",
                             corruption: Corruption | None = None, mask_cfg: MaskConfig | None = None,
                             device: str | torch.device = "cpu", precision: str = "auto", seed: int = 0,
                             log: Callable[[str], None] | None = None, log_every: int = 100
                             ) -> tuple[GridDenoiser, StochasticStats]:
    """Train a :class:`GridDenoiser` on the frozen ``target_encoder``'s features of ``train_images`` ((N, C, H, W)
    in [0, 1] at the encoder's resolution; features extracted once, stored in bf16), for ``steps`` steps or
    ``minutes`` (whichever ends first), AdamW with warm-up and cosine decay over that budget. Box tokens are
    corrupted by ``corruption`` inside target-sized boxes drawn as the mask sampler draws targets
    (``mask_cfg``)."""
    if steps is None and minutes is None:
        raise VizError("give steps or minutes")
    corruption = corruption or Corruption()
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    torch.manual_seed(seed)
    grid, patch = tuple(int(v) for v in target_encoder.grid_size), int(target_encoder.patch_size)
    feats = _features(target_encoder, train_images, device, prec).to(torch.bfloat16)
    pixels = train_images.float()
    model = GridDenoiser(int(target_encoder.embed_dim), grid, patch, pixels.shape[1], hidden, depth, pixel_channels,
                         process)
    model.token_mean.copy_(feats.float().mean(0))
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, 1e-4), lr=lr)
    scaler = prec.grad_scaler()
    schedulers = _ddpm_schedulers() if process == "ddpm" else None
    box_pool = box_masks(sample_boxes(grid, 4096, seed, mask_cfg), grid)
    g = torch.Generator().manual_seed(seed)  # which images, boxes and corruptions (CPU)
    g_dev = torch.Generator(device).manual_seed(seed)  # noise levels and noise, drawn where the model runs
    budget_s = minutes * 60.0 if minutes is not None else math.inf
    t0, step, model = time.perf_counter(), 0, model.train()
    while True:
        elapsed = time.perf_counter() - t0
        progress = max(step / steps if steps else 0.0, elapsed / budget_s)
        if progress >= 1.0:
            break
        set_lr(opt, warmup_cosine(progress, 1.0, 0.05, lr))  # over the budget's fraction spent
        idx = torch.randint(len(feats), (min(batch_size, len(feats)),), generator=g)
        masks = box_pool[torch.randint(len(box_pool), (len(idx),), generator=g)]
        pool, shrink = corruption.draw(len(idx), g)
        cond = corrupt_box_tokens(feats[idx].to(device).float(), masks.to(device), model.token_mean,
                                  pool.to(device), shrink.to(device))
        x_t, t, target = training_pair(process, pixels[idx].to(device), g_dev, schedulers)
        with prec.autocast():
            out = model(x_t, t, cond)
        loss = F.mse_loss(out.float(), target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        if log and step % log_every == 0:
            log(f"step {step}: loss {loss.item():.4f} ({elapsed:.0f} s)")
    model.eval()
    seconds = time.perf_counter() - t0
    return model, _validate(model, target_encoder, val_images if val_images is not None else train_images[-256:],
                            pixels, step, seconds, device, prec, seed)


def _features(target_encoder: nn.Module, images: torch.Tensor, device: torch.device, prec: Precision,
              batch_size: int = 256) -> torch.Tensor:
    """Condition tokens (N, num_patches, D) of [0, 1] images, on ``device`` in ``prec``, returned on the CPU."""
    target_encoder = target_encoder.to(device).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = encoder_input(images[i:i + batch_size], target_encoder).to(device)
            with prec.autocast():
                out.append(decoder_input(inference_forward(target_encoder, x).float()).cpu())
    return torch.cat(out)


def _validate(model: GridDenoiser, target_encoder: nn.Module, val: torch.Tensor, train_pixels: torch.Tensor,
              steps: int, seconds: float, device: torch.device, prec: Precision, seed: int) -> StochasticStats:
    val = val[:512]
    cond = _features(target_encoder, val, device, prec)
    g = torch.Generator(device).manual_seed(seed + 1)
    schedulers = _ddpm_schedulers() if model.arch.process == "ddpm" else None
    with torch.no_grad():
        x_t, t, target = training_pair(model.arch.process, val.float().to(device), g, schedulers)
        with prec.autocast():
            out = model(x_t, t, cond.to(device))
        val_loss = F.mse_loss(out.float(), target).item()
    samples = sample(model, cond, seed=seed, precision=prec.name, device=device)
    mean_img = train_pixels.mean(0, keepdim=True).expand_as(val)
    return StochasticStats(steps, seconds, len(train_pixels), len(val), val_loss, psnr(samples, val),
                           psnr(mean_img, val))


# ------------------------------------------------------------------------------------------------------ sampling


@torch.no_grad()
def sample(model: GridDenoiser, cond: torch.Tensor, *, seed: int = 0, steps: int = 24, batch_size: int = 512,
           device: str | torch.device | None = None, precision: str = "auto") -> torch.Tensor:
    """One sample per condition token grid (B, N, D) -> images (B, C, H, W) in [0, 1] (clamped), on the CPU.

    The starting noise comes from one generator seeded with ``seed`` (drawn for the whole batch in order on the
    CPU), and both samplers are deterministic after it (Euler for flow matching, DDIM with eta 0 for DDPM): the
    same seed gives the same samples on any batch size, another seed other samples."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    prec = resolve_precision(precision, device)
    model = model.to(device).eval()
    a = model.arch
    shape = (len(cond), a.in_chans, a.grid_size[0] * a.patch_size, a.grid_size[1] * a.patch_size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    out = [_integrate(model, noise[i:i + batch_size].to(device), cond[i:i + batch_size].to(device), steps, prec)
           for i in range(0, len(cond), batch_size)]
    return torch.cat(out).cpu()


def _integrate(model: GridDenoiser, x: torch.Tensor, cond: torch.Tensor, steps: int, prec: Precision) -> torch.Tensor:
    def predict(x_t: torch.Tensor, t: float) -> torch.Tensor:
        with prec.autocast():
            return model(x_t, torch.full((len(x_t),), t, device=x_t.device), cond).float()

    if model.arch.process == "flow":  # Euler on the velocity (x_hat - x_t) / (1 - t); the last step lands on x_hat
        for i in range(steps):
            t = i / steps
            x = x + (predict(x, t) - x) / (steps - i)
    else:
        _, sched = _ddpm_schedulers()
        sched.set_timesteps(steps)
        for ts in sched.timesteps:
            x = sched.step(predict(x, float(ts) / _DDPM_STEPS), ts, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


def draw_samples(model: GridDenoiser, cond: torch.Tensor, k: int, *, seed: int = 0, steps: int = 24,
                 device: str | torch.device | None = None, precision: str = "auto") -> torch.Tensor:
    """``k`` samples for each condition (B, N, D) -> (B, k, C, H, W): sample j of every image comes from seed
    ``seed + j``, so adding samples keeps the first ones."""
    return torch.stack([sample(model, cond, seed=seed + j, steps=steps, device=device, precision=precision)
                        for j in range(k)], dim=1)


# ------------------------------------------------------------------------------------------------------ files


def save_stochastic_decoder(model: GridDenoiser, path: str | os.PathLike, *, encoder: nn.Module,
                            source: str = "", stats: StochasticStats | None = None) -> Path:
    """Write the decoder as ``.safetensors``: its weights, the encoder's fingerprint, and as metadata the
    architecture, the encoder's input spec and description, and the training statistics."""
    tensors = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    tensors["encoder_fingerprint"] = fingerprint(encoder)
    meta = {"format": STOCHASTIC_FORMAT, "arch": json.dumps(asdict(model.arch)), "source": source,
            "input_spec": json.dumps(dict(_spec_dict(encoder.input_spec))),
            "stats": json.dumps(asdict(stats) if stats else {})}
    return write_safetensors(tensors, path, meta)


def _spec_dict(spec: Any) -> dict:
    d = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_stochastic_decoder(path: str | os.PathLike) -> tuple[GridDenoiser, dict[str, Any]]:
    """(decoder, info) from a file written by :func:`save_stochastic_decoder`; info holds ``arch``,
    ``input_spec``, ``source``, ``stats`` and the ``fingerprint`` tensor."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != STOCHASTIC_FORMAT:
        raise VizError(f"{path} is not a stochastic decoder written by `ijepa train-decoder --kind stochastic` "
                       f"(format {meta.get('format')!r})")
    info: dict[str, Any] = {k: json.loads(meta[k]) if k in ("arch", "input_spec", "stats") else meta[k]
                            for k in meta}
    info["fingerprint"] = tensors.pop("encoder_fingerprint")
    model = GridDenoiser(**info["arch"])
    model.load_state_dict(tensors)
    return model.eval(), info


def check_fits(model: GridDenoiser, info: dict[str, Any], encoder: nn.Module, tol: float = 0.02) -> None:
    """Raise when the decoder was trained on another encoder's features: the width, grid or patch size differ,
    or (same shapes) the encoder's fingerprint differs from the one the decoder was trained with."""
    a = model.arch
    have = {"token width": a.embed_dim, "patch grid": "x".join(map(str, a.grid_size)), "patch size": a.patch_size}
    want = {"token width": int(encoder.embed_dim), "patch grid": "x".join(str(int(v)) for v in encoder.grid_size),
            "patch size": int(encoder.patch_size)}
    fix = "train one for it with `ijepa train-decoder MODEL --kind stochastic`"
    diff = [f"{k} {have[k]} (this encoder: {want[k]})" for k in have if have[k] != want[k]]
    if diff:
        raise VizError(f"the stochastic decoder was trained for another encoder: {', '.join(diff)}; {fix}")
    mine = fingerprint(encoder)
    ref = info["fingerprint"].float()
    rel = ((mine - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    if rel > tol:
        src = info.get("source") or "another encoder"
        raise VizError(f"the stochastic decoder was trained on the features of {src}; this encoder's features of "
                       f"the fingerprint probe differ from those by {rel:.1%} (tolerance {tol:.0%}): {fix}")
