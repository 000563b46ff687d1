"""The published I-JEPA checkpoints (facebookresearch/ijepa README, "Pretrained models").

Each entry gives what builds the model without reading the file (architecture, patch, resolution, the
predictor of its training config) and what identifies the file (name, URL, rough size). The IN-22K file names
count ImageNet-1K-equivalent epochs (900e, 600e); the README lists 66 and 44 ImageNet-22K epochs.

Sizes are estimates from parameter counts (fp32 context and target encoders, predictor, AdamW's two moments),
not published numbers; they only serve a plausibility check.

``load`` asks :func:`lookup` whether its argument names one of these, and :func:`resolve_path` for the file
(downloaded to the cache folder the first time, from ``$IJEPA_BASE_URL`` when set); nothing here reads weights or
builds a model.
"""

from __future__ import annotations

import os
import sys
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, CheckpointNotFoundError
from ..io import atomic_open
from ..models.vit import VIT_SIZES
from ..spec import InputSpec

BASE_URL = "https://dl.fbaipublicfiles.com/ijepa/"
BASE_URL_ENV = "IJEPA_BASE_URL"  # a mirror (or a test's server on 127.0.0.1) in place of BASE_URL
CACHE_ENV = "IJEPA_HOME"
DEFAULT_CACHE = Path("~/.cache/ijepa")
OFFLINE_ENVS = ("IJEPA_OFFLINE", "HF_HUB_OFFLINE")  # either set to 1: never download


@dataclass(frozen=True)
class PublishedModel:
    name: str
    arch: str              # a key of VIT_SIZES
    patch_size: int
    resolution: int
    data: str
    epochs: int
    filename: str
    approx_gb: float       # estimated full-checkpoint size, decimal GB
    pred_depth: int
    pred_emb_dim: int
    config: str            # the shipped config that trained it
    timm_name: str         # timm's name for the same weights (its port takes `encoder`)

    @property
    def url(self) -> str:
        return base_url() + self.filename

    def encoder_arch(self) -> dict[str, Any]:
        dim, depth, heads, mlp = VIT_SIZES[self.arch]
        return {"img_size": (self.resolution, self.resolution), "patch_size": self.patch_size, "in_chans": 3,
                "embed_dim": dim, "depth": depth, "num_heads": heads, "mlp_ratio": mlp, "qkv_bias": True,
                "norm_eps": 1e-6}

    def predictor_arch(self) -> dict[str, Any]:
        # The reference's predictor takes the encoder's head count; its width and depth come from the config.
        dim, _, heads, _ = VIT_SIZES[self.arch]
        g = self.resolution // self.patch_size
        return {"grid_size": (g, g), "embed_dim": dim, "predictor_embed_dim": self.pred_emb_dim,
                "depth": self.pred_depth, "num_heads": heads, "mlp_ratio": 4.0, "qkv_bias": True,
                "norm_eps": 1e-6}

    def model_arch(self) -> dict[str, Any]:
        """``arch=`` for ``load``: what builds this model without reading the file."""
        return {"encoder": self.encoder_arch(), "predictor": self.predictor_arch()}

    def input_spec(self) -> InputSpec:
        return InputSpec.default(self.resolution, 3)  # trained and evaluated with ImageNet statistics

    def min_plausible_bytes(self) -> int:
        """An encoder alone in 16-bit: anything smaller cannot hold this model."""
        dim, depth, _, mlp = VIT_SIZES[self.arch]
        per_block = 4 * dim * dim + 2 * dim * int(dim * mlp)
        return int(0.9 * 2 * depth * per_block)


PUBLISHED: dict[str, PublishedModel] = {m.name: m for m in (
    PublishedModel("vith14-in1k", "vit_huge", 14, 224, "ImageNet-1K", 300, "IN1K-vit.h.14-300e.pth.tar",
                   10.4, 12, 384, "in1k_vith14_ep300", "vit_huge_patch14_gap_224.in1k_ijepa"),
    PublishedModel("vith16-448-in1k", "vit_huge", 16, 448, "ImageNet-1K", 300,
                   "IN1K-vit.h.16-448px-300e.pth.tar", 10.4, 12, 384, "in1k_vith16-448_ep300",
                   "vit_huge_patch16_gap_448.in1k_ijepa"),
    PublishedModel("vith14-in22k", "vit_huge", 14, 224, "ImageNet-22K", 66, "IN22K-vit.h.14-900e.pth.tar",
                   10.4, 12, 384, "in22k_vith14_ep66", "vit_huge_patch14_gap_224.in22k_ijepa"),
    PublishedModel("vitg16-in22k", "vit_giant", 16, 224, "ImageNet-22K", 44, "IN22K-vit.g.16-600e.pth.tar",
                   16.5, 16, 384, "in22k_vitg16_ep44", "vit_giant_patch16_gap_224.in22k_ijepa"),
)}


def find(name: str) -> PublishedModel | None:
    """The entry ``name`` names (its short name, file name or timm name), or None."""
    key = name.lower()
    return next((m for m in PUBLISHED.values() if key in (m.name, m.filename.lower(), m.timm_name)), None)


def get(name: str) -> PublishedModel:
    m = find(name)
    if m is None:
        raise CheckpointError(f"unknown published model {name!r}; choose from {', '.join(PUBLISHED)}")
    return m


def is_name(name: Any) -> bool:
    return find(str(name)) is not None


def lookup(src: Any, path: str | os.PathLike | None = None) -> PublishedModel | None:
    """The published model ``load(src, path=path)`` means, or None when ``src`` is a file, folder or state dict
    (a name is only taken for one when no such path exists, or when ``path=`` says so)."""
    if path is None and not (isinstance(src, str) and not Path(src).expanduser().exists()):
        return None
    m = find(src) if isinstance(src, str) else None
    if m is None and path is not None:
        raise CheckpointNotFoundError(f"path= is for published model names ({', '.join(PUBLISHED)}); got {src!r}")
    return m


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def base_url() -> str:
    url = os.environ.get(BASE_URL_ENV) or BASE_URL
    return url if url.endswith("/") else url + "/"


def offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENVS)


def describe() -> str:
    """A table of the published models."""
    rows = [f"{'name':<16} {'arch':<9} {'patch':>5} {'res':>4} {'data':<12} {'epochs':>6} {'~GB':>5}  file"]
    for m in PUBLISHED.values():
        rows.append(f"{m.name:<16} {m.arch:<9} {m.patch_size:>5} {m.resolution:>4} {m.data:<12} "
                    f"{m.epochs:>6} {m.approx_gb:>5.1f}  {m.filename}")
    return "\n".join(rows)


def check_file(m: PublishedModel, path: str | os.PathLike) -> Path:
    """Warn (never fail) when ``path`` does not look like ``m``'s file: another file name, or a size no
    checkpoint of this model can have. Returns the path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointNotFoundError(f"no checkpoint at {p} for {m.name}; download it with "
                                      f"ijepa.interop.download({m.name!r}) or from {m.url}")
    if p.is_file():
        if p.name != m.filename:
            warnings.warn(f"{p.name} is not the published file name for {m.name} ({m.filename}); loading it "
                          f"with {m.name}'s architecture anyway", stacklevel=3)
        size = p.stat().st_size
        if size < m.min_plausible_bytes() or size > 1.5e9 * m.approx_gb:
            warnings.warn(f"{p} is {size / 1e9:.2f} GB; {m.name}'s full checkpoint is about {m.approx_gb} GB "
                          "(an encoder alone in fp32 about a quarter of that): is it the right file, and "
                          "complete?", stacklevel=3)
    return p


def resolve_path(m: PublishedModel, path: str | os.PathLike | None = None) -> Path:
    """``path`` when given (checked for plausibility), else the file in the cache folder, downloaded there first
    when it is missing (unless ``IJEPA_OFFLINE`` or ``HF_HUB_OFFLINE`` is set)."""
    if path is not None:
        return check_file(m, path)
    cached = cache_dir() / m.filename
    if not cached.is_file():
        if offline():
            raise CheckpointNotFoundError(
                f"{m.name}: {cached} does not exist and downloads are off ({' / '.join(OFFLINE_ENVS)}). Download "
                f"{m.url} (about {m.approx_gb} GB) and pass path=..., or unset them to fetch it to {cache_dir()} "
                f"(${CACHE_ENV})")
        print(f"{m.name}: downloading {m.url} (about {m.approx_gb} GB) to {cache_dir()} (${CACHE_ENV}), once",
              file=sys.stderr, flush=True)
        download(m.name)
    return check_file(m, cached)


def download(name: str, dest: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Fetch ``name``'s checkpoint to ``dest`` (a folder; default ``$IJEPA_HOME`` or ~/.cache/ijepa). Needs a
    network; skipped when the file is already there. The file appears under its name only once complete
    (:func:`ijepa.io.atomic_open`), so an interrupted download is never mistaken for a checkpoint."""
    m = get(name)
    folder = Path(dest).expanduser() if dest is not None else cache_dir()
    target = folder / m.filename
    if target.is_file():
        return target
    if offline():
        raise CheckpointNotFoundError(f"{m.name}: not downloading {m.url}: downloads are off "
                                      f"({' / '.join(OFFLINE_ENVS)})")
    with urllib.request.urlopen(m.url) as r, atomic_open(target, "wb") as f:
        total, done, shown = int(r.headers.get("Content-Length") or 0), 0, -1
        while chunk := r.read(1 << 20):
            f.write(chunk)
            done += len(chunk)
            pct = done * 100 // total if total > 0 else -1
            if progress and pct >= 0 and pct // 5 != shown:
                shown = pct // 5
                print(f"\r{m.filename}: {pct}% of {total / 1e9:.1f} GB", end="", file=sys.stderr, flush=True)
        if done < total:  # urllib does not raise when the connection ends early
            raise CheckpointError(f"download of {m.url} stopped after {done} of {total} bytes; run it again")
    if progress and total > 0:
        print(file=sys.stderr)
    return target


__all__ = ["PUBLISHED", "PublishedModel", "base_url", "cache_dir", "check_file", "describe", "download", "find",
           "get", "is_name", "lookup", "offline", "resolve_path"]
