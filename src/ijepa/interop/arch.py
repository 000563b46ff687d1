"""Architecture from what a checkpoint holds: the fields its weights show, and ``arch=`` as ``load`` takes it.

The head count is the one architectural field the weights do not record (it only changes how ``qkv`` is split),
so for a width in the size registry the registry's count is taken.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..models.vit import VIT_SIZES, arch_name

ENCODER_ARCH_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                     "qkv_bias", "norm_eps")
PREDICTOR_ARCH_KEYS = ("grid_size", "embed_dim", "predictor_embed_dim", "depth", "num_heads", "mlp_ratio",
                       "qkv_bias", "norm_eps", "one_pass")
HEADS_BY_WIDTH: dict[int, int] = {dim: heads for dim, _, heads, _ in VIT_SIZES.values()}


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    ids = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(ids) + 1 if ids else 0


def exact_ratio(hidden: int, dim: int) -> float:
    """A float r with int(dim·r) == hidden — what our Block computes — even for ratios such as 48/11."""
    r = hidden / dim
    while int(dim * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def default_heads(width: int, what: str) -> int:
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    heads = max(1, width // 64) if width % 64 == 0 else 1
    warnings.warn(f"{what}: the weights do not record the head count and width {width} is not a registered "
                  f"size; assuming {heads} heads (pass arch={{'num_heads': ...}} if that is wrong)",
                  stacklevel=3)
    return heads


def _blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    """depth, mlp_ratio and qkv_bias of the ``{prefix}N.`` blocks."""
    a: dict[str, Any] = {}
    depth = _count(sd, rf"{re.escape(prefix)}(\d+)\.")
    if depth:
        a["depth"] = depth
    fc1 = sd.get(f"{prefix}0.mlp.fc1.weight")
    if fc1 is not None and fc1.ndim == 2:
        a["mlp_ratio"] = exact_ratio(fc1.shape[0], fc1.shape[1])
    if f"{prefix}0.attn.qkv.weight" in sd:
        a["qkv_bias"] = f"{prefix}0.attn.qkv.bias" in sd
    return a


def infer_encoder_arch(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture fields readable from the weights alone (no head count; img_size only for a square
    grid)."""
    a: dict[str, Any] = {}
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        a.update(embed_dim=w.shape[0], in_chans=w.shape[1], patch_size=w.shape[-1])
    elif "pos_embed" in sd:
        a["embed_dim"] = sd["pos_embed"].shape[-1]
    a.update(_blocks(sd, "blocks."))
    pos = sd.get("pos_embed")
    if pos is not None and "patch_size" in a:
        side = math.isqrt(pos.shape[1])
        if side * side == pos.shape[1]:
            a["img_size"] = side * a["patch_size"]
    return a


def infer_predictor_arch(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    a: dict[str, Any] = {}
    w = sd.get("predictor_embed.weight")
    if w is not None and w.ndim == 2:
        a.update(predictor_embed_dim=w.shape[0], embed_dim=w.shape[1])
    a.update(_blocks(sd, "predictor_blocks."))
    return a


def normalise_arch(arch: str | Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``arch`` as given to ``load`` -> (encoder fields, predictor fields). Accepts a size name
    ('vit_huge', 'huge', 'ViT-H'), VisionTransformer kwargs, or ``{"encoder": {...}, "predictor": {...}}``
    (our checkpoints' ``arch``); an encoder dict may name its size under ``"arch"`` / ``"model_name"``."""
    if arch is None:
        return {}, {}
    if isinstance(arch, str):
        dim, depth, heads, mlp = VIT_SIZES[arch_name(arch)]
        return dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp), {}
    arch = dict(arch)
    if "encoder" in arch or "predictor" in arch:
        enc, _ = normalise_arch(arch.get("encoder"))
        return enc, dict(arch.get("predictor") or {})
    size = arch.pop("arch", None) or arch.pop("model_name", None)
    enc = normalise_arch(size)[0] if size else {}
    enc.update(arch)
    return enc, {}
