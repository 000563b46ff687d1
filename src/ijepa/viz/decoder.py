"""A pixel decoder for frozen target-encoder patch features: the lens through which predictions become pictures.

I-JEPA predicts in representation space, so to *see* a prediction something must map representations back to
pixels. The decoder here is trained on the target encoder's own features of real images (never on the
predictor's output), so it knows nothing about prediction: applied to the predictor's output it shows what those
representations mean, and applied to the true features it shows the best the lens can do (the "ground truth"
panel of ``viz predict``).

Input space: ``normalize_targets(target_encoder(x))`` (``ijepa.models.targets``: the per-token layer norm) —
exactly what the predictor is trained to regress. Architecture: a per-token MLP, residual 3x3 convolutions over the
token grid (so a patch may borrow from its neighbours), a linear map from each token to its patch's pixel features,
and two 3x3 convolutions at pixel level that smooth patch seams. Loss: L1 on [0, 1] pixels.

Saved as ``.safetensors`` with the architecture, the encoder's input spec and the training statistics as
metadata (``load_decoder`` rebuilds it).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.targets import normalize_targets
from ..optim import param_groups, set_lr, warmup_cosine
from ..precision import backward_step, resolve_precision
from . import VizError
from .features import encode

DECODER_FORMAT = "ijepa-pixel-decoder"


# The decoder reads what the predictor regresses: the one target normalisation, shared with the loss.
decoder_input = normalize_targets


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of [0, 1] images, from the mean squared error over the whole set."""
    mse = F.mse_loss(pred.float().clamp(0, 1), target.float()).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@dataclass
class DecoderArch:
    embed_dim: int
    grid_size: tuple[int, int]
    patch_size: int
    in_chans: int
    hidden: int = 128
    depth: int = 2
    pixel_channels: int = 16


class _ConvBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        # Zero-initialised last layer: the block starts as the identity, so training starts from the per-token map.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class PixelDecoder(nn.Module):
    """Layer-normed patch tokens (B, gh·gw, D) -> images (B, C, gh·p, gw·p) on the [0, 1] pixel scale
    (unclamped; clamp for display)."""

    def __init__(self, embed_dim: int, grid_size: tuple[int, int] | list[int], patch_size: int, in_chans: int,
                 hidden: int = 128, depth: int = 2, pixel_channels: int = 16):
        super().__init__()
        self.arch = DecoderArch(int(embed_dim), (int(grid_size[0]), int(grid_size[1])), int(patch_size),
                                int(in_chans), int(hidden), int(depth), int(pixel_channels))
        self.embed = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.refine = nn.ModuleList(_ConvBlock(hidden) for _ in range(depth))
        self.to_pixels = nn.Linear(hidden, patch_size * patch_size * pixel_channels)
        self.pixel_conv = nn.Sequential(nn.GELU(), nn.Conv2d(pixel_channels, pixel_channels, 3, padding=1), nn.GELU(),
                                        nn.Conv2d(pixel_channels, in_chans, 3, padding=1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        a = self.arch
        (gh, gw), p = a.grid_size, a.patch_size
        b, n, _ = tokens.shape
        if n != gh * gw:
            raise ValueError(f"expected {gh * gw} tokens ({gh}x{gw} grid), got {n}")
        x = self.embed(tokens).transpose(1, 2).reshape(b, -1, gh, gw)
        for blk in self.refine:
            x = blk(x)
        x = self.to_pixels(x.flatten(2).transpose(1, 2))  # (B, N, p·p·c)
        x = x.view(b, gh, gw, p, p, a.pixel_channels).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, gh * p, gw * p)
        return self.pixel_conv(x)


@dataclass
class DecoderStats:
    steps: int
    seconds: float
    train_images: int
    val_images: int
    val_psnr: float
    mean_image_psnr: float
    val_l1: float
    precision: str = "fp32"


def train_decoder(target_encoder: nn.Module, train_images: torch.Tensor, *, val_images: torch.Tensor | None = None,
                  steps: int | None = None, minutes: float | None = None, batch_size: int = 128, lr: float = 2e-3,
                  hidden: int = 128, depth: int = 2, pixel_channels: int = 16, seed: int = 0,
                  log: Callable[[str], None] | None = None, log_every: int = 100, dtype: str = "fp32"
                  ) -> tuple[PixelDecoder, DecoderStats]:
    """Train a :class:`PixelDecoder` on the frozen ``target_encoder``'s features of ``train_images``.

    Images are (N, C, H, W) in [0, 1] at the encoder's resolution; features are extracted once up front. Runs
    ``steps`` steps or for ``minutes`` (whichever is given; both: whichever ends first), AdamW with warmup and
    cosine decay over that budget. Held-out ``val_images`` give the reported PSNR, beside the PSNR of predicting
    the training set's mean image for every image (the floor any decoder must clear). ``dtype`` (auto | bf16 |
    fp16 | fp32, the precision policy's; fp16 with a gradient scaler) runs the feature extraction and the
    decoder's steps; fp32 by default, so a decoder's figures compare across machines.
    """
    if steps is None and minutes is None:
        raise VizError("give steps or minutes")
    torch.manual_seed(seed)
    encoder_dim = int(target_encoder.embed_dim)
    grid = tuple(target_encoder.grid_size)
    patch = int(target_encoder.patch_size)
    precision = resolve_precision(dtype, next(target_encoder.parameters()).device)
    feats = decoder_input(encode(target_encoder, train_images, precision=precision))
    pixels = train_images.float()
    decoder = PixelDecoder(encoder_dim, grid, patch, pixels.shape[1], hidden, depth, pixel_channels)
    opt = torch.optim.AdamW(param_groups(decoder, 1e-4), lr=lr)
    scaler = precision.grad_scaler()
    budget_s = minutes * 60.0 if minutes is not None else math.inf
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    step = 0
    decoder.train()
    while True:
        elapsed = time.perf_counter() - t0
        progress = max(step / steps if steps else 0.0, elapsed / budget_s)
        if progress >= 1.0:
            break
        set_lr(opt, warmup_cosine(progress, 1.0, 0.05, lr))  # over the budget's fraction spent
        idx = torch.randint(len(feats), (min(batch_size, len(feats)),), generator=g)
        with precision.autocast():
            recon = decoder(feats[idx])
        loss = F.l1_loss(recon.float(), pixels[idx])
        opt.zero_grad(set_to_none=True)
        backward_step(loss, opt, scaler)
        step += 1
        if log and step % log_every == 0:
            log(f"step {step}: L1 {loss.item():.4f} ({elapsed:.0f} s)")
    decoder.eval()
    seconds = time.perf_counter() - t0
    val = val_images if val_images is not None else train_images[-256:]
    with torch.no_grad():
        recon = decode_images(decoder, target_encoder, val)
        mean_img = pixels.mean(0, keepdim=True).expand_as(val)
        stats = DecoderStats(step, seconds, len(train_images), len(val), psnr(recon, val), psnr(mean_img, val),
                             F.l1_loss(recon.clamp(0, 1), val.float()).item(), precision.name)
    return decoder, stats


@torch.no_grad()
def decode_images(decoder: PixelDecoder, target_encoder: nn.Module, images: torch.Tensor,
                  batch_size: int = 256) -> torch.Tensor:
    """Encode [0, 1] images with the target encoder and decode them back (the decoder's reconstruction)."""
    out = [decoder(decoder_input(encode(target_encoder, images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def save_decoder(decoder: PixelDecoder, path: str | os.PathLike, *, input_spec: dict | None = None,
                 source: str = "", stats: DecoderStats | None = None) -> Path:
    """Write the decoder as ``.safetensors`` with its architecture (and what it was trained for) as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = asdict(decoder.arch)
    meta = {"format": DECODER_FORMAT, "arch": json.dumps(arch), "source": source,
            "input_spec": json.dumps(_jsonable(input_spec or {})), "stats": json.dumps(asdict(stats) if stats else {})}
    save_file({k: v.detach().contiguous() for k, v in decoder.state_dict().items()}, str(path), metadata=meta)
    return path


def load_decoder(path: str | os.PathLike) -> tuple[PixelDecoder, dict[str, Any]]:
    """(decoder, metadata) from a file written by :func:`save_decoder`; metadata holds ``arch``, ``input_spec``,
    ``source`` and ``stats`` (decoded from JSON)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no decoder at {path} (make one with `ijepa train-decoder MODEL --out {path}`)")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != DECODER_FORMAT:
        raise VizError(f"{path} is not a pixel decoder written by `ijepa train-decoder`")
    info = {k: json.loads(meta[k]) if k in ("arch", "input_spec", "stats") else meta[k] for k in meta}
    decoder = PixelDecoder(**info["arch"])
    decoder.load_state_dict(load_file(str(path)))
    return decoder.eval(), info


def check_decoder_fits(decoder: PixelDecoder, encoder: nn.Module) -> None:
    """Raise when a decoder was trained for another encoder's width, grid or patch size."""
    a = decoder.arch
    want = (int(encoder.embed_dim), tuple(int(v) for v in encoder.grid_size), int(encoder.patch_size))
    if (a.embed_dim, tuple(a.grid_size), a.patch_size) != want:
        raise VizError(f"the decoder reads {a.embed_dim}-dim tokens on a {a.grid_size[0]}x{a.grid_size[1]} grid of "
                       f"{a.patch_size}-px patches; this encoder has {want[0]}-dim tokens, a {want[1][0]}x{want[1][1]} "
                       f"grid, {want[2]}-px patches: train a decoder for it with `ijepa train-decoder`")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):  # dicts and InputSpec
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
