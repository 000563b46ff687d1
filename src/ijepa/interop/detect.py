"""Which format a checkpoint is, and its reader: ``read_weights(src) -> Weights`` in our names.

Detection, in order:
  a directory           .metadata and extras.pt           -> our sharded training checkpoint (sharded.py)
                        config.json with ``architecture`` -> timm export (timm.py)
                        config.json with ``model_type``   -> transformers IJepaModel (hf.py)
  ``.safetensors``      metadata ``format: ijepa``        -> our export (native.py)
                        a flat state dict                 -> by its names, as below
  anything else         a ``weights_only`` torch pickle:
                        ``format: ijepa`` + models        -> our training checkpoint (native.py)
                        ``encoder``/``target_encoder``    -> the reference's .pth.tar (reference.py)
                        ``state_dict``/``model`` wrapper  -> what it wraps
                        a flat state dict: transformers names -> hf.py; reference/timm names -> timm.py
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UnknownFormatError
from ..io import existing, read_json, read_safetensors, read_torch
from . import hf, native, reference, sharded
from . import timm as timm_fmt
from .weights import Weights, check_which, split_predictor, state_dict

# Containers that some tools wrap a state dict in.
STATE_DICT_WRAPPERS = ("state_dict", "model")


def read_weights(src: str | os.PathLike | Mapping[str, Any], which: str = "target_encoder") -> Weights:
    """Detect the format of ``src`` and translate it to our names (no model is built)."""
    check_which(which)
    if isinstance(src, Mapping):
        return _from_object(src, "<state dict>", which)
    p = existing(src)
    if p.is_dir():
        if sharded.is_sharded(p):  # meta.parallel: fsdp's checkpoint folder, read whole (weights only)
            return native.read_training_checkpoint(sharded.read_sharded(p, optimizer=False), which, str(p))
        return _from_dir(p)
    if p.suffix == ".safetensors":
        sd, meta = read_safetensors(p)
        if native.is_native_export(meta):
            return native.read_native_export(sd, meta, str(p))
        return _from_flat(sd, meta, str(p))
    return _from_object(read_torch(p), str(p), which)


def _from_dir(d: Path) -> Weights:
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise UnknownFormatError(f"{d} is a directory without config.json: neither a transformers nor a timm "
                                 "export")
    cfg = read_json(cfg_file)
    if timm_fmt.is_timm_config(cfg):
        return timm_fmt.read_timm_dir(d, cfg)
    if hf.is_hf_config(cfg):
        return hf.read_hf_dir(d, cfg)
    raise UnknownFormatError(f"{cfg_file} is neither a transformers nor a timm config")


def _from_object(obj: Any, path: str, which: str) -> Weights:
    if not isinstance(obj, Mapping):
        raise UnknownFormatError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    if native.is_training_checkpoint(obj):
        return native.read_training_checkpoint(obj, which, path)
    if reference.is_reference(obj):
        return reference.read_reference(obj, which, path)
    for k in STATE_DICT_WRAPPERS:
        if isinstance(obj.get(k), Mapping) and len(obj) <= 3:
            return _from_object(obj[k], path, which)
    return _from_flat(obj, {}, path)


def _from_flat(sd: Mapping[str, Any], meta: Mapping[str, str], path: str) -> Weights:
    sd = state_dict(sd, path)
    keys = list(sd)
    if hf.looks_like_hf(keys):
        return hf.read_hf_state(sd, meta, path)
    enc, pred = split_predictor(sd)
    if "patch_embed.proj.weight" in enc or any(k.startswith("blocks.") for k in enc):
        cfg = timm_fmt.sidecar_for(Path(path)) if Path(path).is_file() else None
        w = timm_fmt.read_timm_state(enc, path, cfg)
        w.predictor = pred or None
        return w
    raise UnknownFormatError(
        f"{path}: not a checkpoint layout we know (reference .pth.tar, transformers IJepaModel, timm ViT or "
        f"ijepa); its first keys are: {', '.join(keys[:5]) or '(none)'}")
