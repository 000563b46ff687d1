"""timm's I-JEPA ViTs (``vit_huge_patch14_gap_224.in1k_ijepa`` and friends): state dicts and exports.

timm builds them as ``VisionTransformer(class_token=False, global_pool="avg", fc_norm=False)``: no class
token, a (1, N, D) ``pos_embed`` without prefix slots, ``fc_norm`` an Identity, so ``forward_features`` ends
with ``norm`` — our final ``norm`` — and returns the same tokens as our ``forward``. Parameter names are the
reference's, key for key (``blocks.N.attn.qkv`` fused like ours); LayerNorm eps is timm's fixed 1e-6. timm's
``checkpoint_filter_fn`` takes the reference file's ``encoder`` (the context encoder), not
``target_encoder``.

An export is timm's own local layout (``config.json`` with ``architecture``, ``model_args`` and
``pretrained_cfg``, + ``model.safetensors``), which ``timm.create_model("local-dir:DIR", pretrained=True)``
loads; or, for a ``.safetensors`` destination, that file plus the same JSON as a sidecar ``<stem>.json``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_folder, atomic_write_json, read_json, read_safetensors, read_torch, write_safetensors
from ..spec import InputSpec
from .weights import StateDict, Weights, declared_spec, split_predictor, strip_wrappers, tensors_only

# ours -> timm: the identity. Listed so the mapping is explicit where each format is described.
TIMM_KEYS: dict[str, str] = {
    "patch_embed.proj": "patch_embed.proj",
    "pos_embed": "pos_embed",
    "blocks.N.norm1": "blocks.N.norm1",
    "blocks.N.attn.qkv": "blocks.N.attn.qkv",
    "blocks.N.attn.proj": "blocks.N.attn.proj",
    "blocks.N.norm2": "blocks.N.norm2",
    "blocks.N.mlp.fc1": "blocks.N.mlp.fc1",
    "blocks.N.mlp.fc2": "blocks.N.mlp.fc2",
    "norm": "norm",
}
# A classifier head (present when num_classes > 0) is not part of the encoder.
TIMM_IGNORED_PREFIXES = ("head.",)
# Registered timm architectures for the published models: (size, patch, resolution) -> name.
TIMM_IJEPA_NAMES: dict[tuple[int, int, int, int], str] = {
    # (embed_dim, depth, patch, resolution)
    (1280, 32, 14, 224): "vit_huge_patch14_gap_224",
    (1280, 32, 16, 448): "vit_huge_patch16_gap_448",
    (1408, 40, 16, 224): "vit_giant_patch16_gap_224",
}
# Any other size: a registered avg-pool ViT, with every field overridden through model_args.
TIMM_FALLBACK_NAME = "vit_base_patch16_gap_224"
TIMM_EPS = 1e-6
TIMM_SOURCE_KEY = "ijepa"  # our extra block in config.json; timm ignores unknown top-level keys
# What an export folder holds (ours, and timm's other weight file); a folder holding anything else is not replaced.
TIMM_EXPORT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def from_timm(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    out = {k: v for k, v in sd.items() if not k.startswith(TIMM_IGNORED_PREFIXES)}
    dropped = sorted({k.split(".")[0] for k in sd if k.startswith(TIMM_IGNORED_PREFIXES)})
    return out, dropped


def timm_name(encoder: Any) -> str:
    h, w = encoder.img_size
    key = (encoder.embed_dim, encoder.depth, encoder.patch_size, h)
    return TIMM_IJEPA_NAMES.get(key, TIMM_FALLBACK_NAME) if h == w else TIMM_FALLBACK_NAME


def model_args_for(encoder: Any) -> dict[str, Any]:
    """``timm.create_model(name, **model_args)`` rebuilds the encoder's architecture, whatever ``name`` is."""
    h, w = encoder.img_size
    return {
        "img_size": h if h == w else [h, w],
        "patch_size": encoder.patch_size,
        "in_chans": encoder.in_chans,
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "num_heads": encoder.num_heads,
        "mlp_ratio": encoder.mlp_ratio,
        "qkv_bias": encoder.blocks[0].attn.qkv.bias is not None if encoder.depth else True,
        "class_token": False,
        "global_pool": "avg",
        "fc_norm": False,
        "num_classes": 0,
    }


def config_for(encoder: Any, source: str | None = None) -> dict[str, Any]:
    spec = declared_spec(encoder)
    return {
        "architecture": timm_name(encoder),
        "num_classes": 0,
        "num_features": encoder.embed_dim,
        "global_pool": "avg",
        "model_args": model_args_for(encoder),
        "pretrained_cfg": {
            "input_size": [spec["in_chans"], *spec["image_size"]],
            "mean": list(spec["mean"]),
            "std": list(spec["std"]),
            "interpolation": "bicubic",
            "fixed_input_size": True,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "custom_load": False,
            "num_classes": 0,
        },
        TIMM_SOURCE_KEY: {"source": source or getattr(encoder, "source", "") or "ijepa export",
                          "input_spec": spec.to_dict()},
    }


def save_timm(encoder: Any, dst: str | os.PathLike, source: str | None = None) -> Path:
    """Write a timm-loadable export (see the module docstring); returns the weights file."""
    if abs(encoder.norm_eps - TIMM_EPS) > 1e-9:
        warnings.warn(f"timm's ViT uses LayerNorm eps {TIMM_EPS}; this encoder uses {encoder.norm_eps}, so "
                      "timm will compute slightly different features", stacklevel=3)
    dst = Path(dst)
    cfg = config_for(encoder, source)
    if dst.suffix == ".safetensors":
        write_safetensors(encoder.state_dict(), dst, {"format": "pt"})
        atomic_write_json(dst.with_suffix(".json"), cfg)
        return dst
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} exists and is not a directory; pass a folder or a .safetensors path")
    # a folder is written whole, config.json last: timm (like transformers) takes a folder with one as complete
    with atomic_folder(dst, TIMM_EXPORT_FILES, "timm export") as tmp:
        write_safetensors(encoder.state_dict(), tmp / "model.safetensors", {"format": "pt"})
        atomic_write_json(tmp / "config.json", cfg)
    return dst / "model.safetensors"


def sidecar_for(path: Path) -> dict[str, Any] | None:
    """The timm config describing ``path``: ``<stem>.json`` beside it, or config.json in its folder."""
    for cand in (path.with_suffix(".json"), path.parent / "config.json"):
        if cand.is_file() and cand != path:
            cfg = read_json(cand)
            if is_timm_config(cfg):
                return cfg
    return None


def is_timm_config(cfg: Mapping[str, Any]) -> bool:
    return "architecture" in cfg and "model_type" not in cfg


def hints_from_config(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """timm config.json -> (arch fields, input_spec, stored source)."""
    args = dict(cfg.get("model_args") or {})
    hint = {k: args[k] for k in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                                 "qkv_bias") if k in args}
    if "img_size" in args:
        hint["img_size"] = args["img_size"]
    if args.get("class_token") or args.get("reg_tokens") or args.get("fc_norm"):
        raise CheckpointError(f"timm architecture {cfg.get('architecture')} has a class/register token or "
                           "fc_norm: not an I-JEPA ViT")
    hint["norm_eps"] = TIMM_EPS
    ours = cfg.get(TIMM_SOURCE_KEY) or {}
    spec = ours.get("input_spec")
    pc = cfg.get("pretrained_cfg") or {}
    if spec is None and pc.get("input_size"):
        c, h, w = pc["input_size"]
        spec = InputSpec.coerce({"mean": pc.get("mean") or None, "std": pc.get("std") or None},
                                image_size=(h, w), in_chans=c)
    if "img_size" not in hint and pc.get("input_size"):
        hint["img_size"] = tuple(pc["input_size"][1:])
    return hint, spec, ours.get("source")


def read_timm_dir(d: Path, cfg: Mapping[str, Any]) -> Weights:
    """A folder as :func:`save_timm` (or timm's ``save_pretrained``) writes it: config.json + the weights."""
    if (d / "model.safetensors").is_file():
        sd, _ = read_safetensors(d / "model.safetensors")
    else:
        sd = tensors_only(read_torch(d / "pytorch_model.bin"), str(d))
    enc, _ = split_predictor(strip_wrappers(sd))
    return read_timm_state(enc, str(d), cfg)


def read_timm_state(sd: Mapping[str, torch.Tensor], path: str, cfg: Mapping[str, Any] | None) -> Weights:
    """A state dict in the timm/reference layout, with its timm config when one is beside it."""
    ours, dropped = from_timm(sd)
    hint: dict[str, Any] = {}
    spec = None
    if cfg is not None:
        hint, spec, stored = hints_from_config(cfg)
        source = f"timm {cfg.get('architecture')}" + (f" ({stored})" if stored else "")
    else:
        source = "timm/reference-layout state dict"
    if dropped:
        source += f"; ignored: {', '.join(dropped)}"
    return Weights(encoder=ours, path=path, source=source, encoder_hint=hint, input_spec=spec)


__all__ = ["TIMM_IJEPA_NAMES", "TIMM_KEYS", "config_for", "from_timm", "is_timm_config", "model_args_for",
           "read_timm_dir", "read_timm_state", "save_timm", "sidecar_for", "timm_name"]
