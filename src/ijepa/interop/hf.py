"""transformers ``IJepaModel``: directories (``config.json`` + weights) and state dicts, read and written.

Two key layouts exist for the same weights. Files on the Hub — and what ``save_pretrained`` writes in
transformers 5.x — use the ViT "hub" layout; transformers 5 holds other names in memory and renames on load
(``conversion_mapping.py``: IJepaModel -> the ViTModel rules). We read both and always write the hub layout,
which every transformers version loads. q, k and v are three Linear layers there; ours is one fused ``qkv``
whose rows are q, then k, then v (the head split inside each is the same in both).

No import of transformers here: the directory we write must load with transformers alone, and reading one must
not need it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CheckpointReadError, UnknownFormatError
from ..io import (
    atomic_folder,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    read_json,
    read_safetensors,
    read_torch,
    write_safetensors,
)
from ..spec import InputSpec
from .arch import exact_ratio
from .weights import StateDict, Weights, declared_spec, tensors_only

# ours <-> transformers, outside the blocks (identical in both transformers layouts)
HF_TOP: dict[str, str] = {
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "pos_embed": "embeddings.position_embeddings",
    "norm": "layernorm",
}

# per block: ours -> hub layout (encoder.layer.N.…), as on the Hub and as save_pretrained writes
HF_HUB_BLOCK_PREFIX = "encoder.layer.{i}."
HF_HUB_BLOCK: dict[str, str] = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
HF_HUB_QKV: tuple[str, str, str] = ("attention.attention.query", "attention.attention.key",
                                    "attention.attention.value")

# per block: ours -> transformers-5 in-memory layout (layers.N.…), what IJepaModel().state_dict() holds
HF_MEM_BLOCK: dict[str, str] = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
HF_MEM_QKV: tuple[str, str, str] = ("attention.q_proj", "attention.k_proj", "attention.v_proj")

# (block-key regex, ours<-theirs table, q/k/v names) per layout
HF_LAYOUTS: dict[str, tuple[re.Pattern, dict[str, str], tuple[str, str, str]]] = {
    "hub": (re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$"),
            {v: k for k, v in HF_HUB_BLOCK.items()}, HF_HUB_QKV),
    "memory": (re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$"),
               {v: k for k, v in HF_MEM_BLOCK.items()}, HF_MEM_QKV),
}
# IJepaForImageClassification nests the encoder under "ijepa."
HF_BASE_PREFIX = "ijepa."
# Heads around the encoder, not part of it: dropped (and said so in .source).
HF_IGNORED_PREFIXES = ("pooler.", "classifier.", "embeddings.mask_token")

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
# What the published transformers ports hold (facebookresearch/ijepa #51): the context encoder.
HF_PORT_SOURCE = "transformers IJepaModel (context encoder, as converted from the reference's `encoder`)"
# Written into model.safetensors' metadata so that a directory we exported says what it holds.
HF_SOURCE_METADATA_KEY = "ijepa_source"
PIL_BICUBIC = 3


def looks_like_hf(keys: list[str]) -> bool:
    starts = ("embeddings.patch_embeddings", "encoder.layer.", "layers.", HF_BASE_PREFIX + "embed")
    return any(k.startswith(starts) for k in keys)


def from_hf(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """transformers names (either layout, with or without ``ijepa.``) -> ours. Returns (state dict, dropped
    head prefixes). Keys that match nothing are kept under their own name, so the strict check names them."""
    out: StateDict = {}
    dropped: set[str] = set()
    qkv: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for key, v in sd.items():
        k = key[len(HF_BASE_PREFIX):] if key.startswith(HF_BASE_PREFIX) else key
        if k.startswith(HF_IGNORED_PREFIXES):
            dropped.add(k.split(".")[0] if not k.startswith("embeddings.") else k)
            continue
        top = next((ours for ours, theirs in HF_TOP.items()
                    if k == theirs or k.startswith(theirs + ".")), None)
        if top is not None:
            out[top + k[len(HF_TOP[top]):]] = v
            continue
        for rx, table, qkv_names in HF_LAYOUTS.values():
            m = rx.match(k)
            if not m:
                continue
            i, module, param = int(m.group(1)), m.group(2), m.group(3)
            if module in table:
                out[f"blocks.{i}.{table[module]}.{param}"] = v
                break
            if module in qkv_names:
                qkv.setdefault((i, param), {})[qkv_names.index(module)] = v
                break
        else:
            out[key] = v
    for (i, param), parts in sorted(qkv.items()):
        if len(parts) == 3:
            out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
        else:
            # An incomplete triple cannot be fused: leave the pieces so the mismatch error lists them.
            for j, t in parts.items():
                out[f"encoder.layer.{i}.{HF_HUB_QKV[j]}.{param}"] = t
    return out, sorted(dropped)


def to_hf(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Ours -> the hub layout (what ``save_pretrained`` writes and ``from_pretrained`` reads)."""
    rx = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
    out: StateDict = {}
    for k, v in sd.items():
        top = next((ours for ours in HF_TOP if k == ours or k.startswith(ours + ".")), None)
        if top is not None:
            out[HF_TOP[top] + k[len(top):]] = v
            continue
        m = rx.match(k)
        if not m:
            raise CheckpointError(f"no transformers name for parameter {k}")
        i, module, param = m.groups()
        prefix = HF_HUB_BLOCK_PREFIX.format(i=i)
        if module == "attn.qkv":
            for name, part in zip(HF_HUB_QKV, v.chunk(3, dim=0)):
                out[f"{prefix}{name}.{param}"] = part.clone()
        elif module in HF_HUB_BLOCK:
            out[f"{prefix}{HF_HUB_BLOCK[module]}.{param}"] = v
        else:
            raise CheckpointError(f"no transformers name for parameter {k}")
    return out


def arch_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """config.json -> our VisionTransformer fields. ``layer_norm_eps`` is taken as written: IJepaConfig's
    default is 1e-12 but the published ports (and the reference) use 1e-6."""
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"hidden_act={act!r} in config.json: only exact GELU ('gelu') is supported")
    a: dict[str, Any] = {}
    if "hidden_size" in cfg:
        a["embed_dim"] = int(cfg["hidden_size"])
        if "intermediate_size" in cfg:
            a["mlp_ratio"] = exact_ratio(int(cfg["intermediate_size"]), a["embed_dim"])
    for ours, theirs in (("depth", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
                         ("in_chans", "num_channels")):
        if theirs in cfg:
            a[ours] = int(cfg[theirs])
    if "patch_size" in cfg:
        p = cfg["patch_size"]
        if not isinstance(p, int):
            if len(set(p)) != 1:
                raise CheckpointError(f"non-square patches {p} are not supported")
            p = p[0]
        a["patch_size"] = int(p)
    if "image_size" in cfg:
        s = cfg["image_size"]
        a["img_size"] = (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))
    a["qkv_bias"] = bool(cfg.get("qkv_bias", True))
    a["norm_eps"] = float(cfg.get("layer_norm_eps", 1e-12))  # IJepaConfig's default when the field is absent
    return a


def input_spec_from_preprocessor(pp: Mapping[str, Any], img_size: Any, in_chans: int) -> InputSpec:
    """preprocessor_config.json -> input_spec: the crop size (else the resize size, else the model's) and the
    normalisation statistics."""
    given: dict[str, Any] = {"mean": pp.get("image_mean"), "std": pp.get("image_std")}
    size = pp.get("crop_size") if pp.get("do_center_crop") else pp.get("size")
    if isinstance(size, Mapping) and "height" in size and "width" in size:
        given["image_size"] = (int(size["height"]), int(size["width"]))
    elif isinstance(size, int):
        given["image_size"] = (size, size)
    return InputSpec.coerce(given, image_size=img_size, in_chans=in_chans)


def _read_weight_files(d: Path) -> tuple[StateDict, dict[str, str]]:
    for name in HF_WEIGHT_FILES:
        f = d / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(read_json(f).get("weight_map", {}).values()))
            if not shards:
                raise CheckpointReadError(f"{f} lists no weight files")
            sd: StateDict = {}
            meta: dict[str, str] = {}
            for s in shards:
                part, m = _read_one(d / s)
                sd.update(part)
                meta.update(m)
            return sd, meta
        return _read_one(f)
    raise CheckpointReadError(f"{d} has a config.json but none of {', '.join(HF_WEIGHT_FILES)}")


def _read_one(f: Path) -> tuple[StateDict, dict[str, str]]:
    if f.suffix == ".safetensors":
        return read_safetensors(f)
    obj = read_torch(f)
    if not isinstance(obj, Mapping):
        raise UnknownFormatError(f"{f} holds a {type(obj).__name__}, not a state dict")
    return tensors_only(obj, str(f)), {}


def is_hf_config(cfg: Mapping[str, Any]) -> bool:
    return "model_type" in cfg or "architectures" in cfg or "hidden_size" in cfg


def read_hf_dir(d: Path, cfg: Mapping[str, Any]) -> Weights:
    """A directory as written by ``save_pretrained`` (or by us): config.json, the weights, and
    preprocessor_config.json when present."""
    model_type = cfg.get("model_type")
    if model_type not in (None, "ijepa"):
        raise UnknownFormatError(f"{d}/config.json says model_type={model_type!r}; only 'ijepa' models load "
                                 "(other ViTs carry a class token and a different position table)")
    hint = arch_from_config(cfg)
    sd, meta = _read_weight_files(d)
    ours, dropped = from_hf(sd)
    spec = None
    pp = d / "preprocessor_config.json"
    if pp.is_file():
        spec = input_spec_from_preprocessor(read_json(pp), hint.get("img_size", 224), hint.get("in_chans", 3))
    return Weights(encoder=ours, path=str(d), source=_source(meta, dropped), encoder_hint=hint,
                   input_spec=spec)


def read_hf_state(sd: Mapping[str, torch.Tensor], meta: Mapping[str, str], path: str) -> Weights:
    """A bare state dict in transformers names; a config.json beside the file supplies the architecture."""
    ours, dropped = from_hf(sd)
    hint: dict[str, Any] = {}
    cfg_file = Path(path).parent / "config.json"
    if Path(path).is_file() and cfg_file.is_file():
        cfg = read_json(cfg_file)
        if cfg.get("model_type") == "ijepa":
            hint = arch_from_config(cfg)
    return Weights(encoder=ours, path=path, source=_source(meta, dropped, bare=True), encoder_hint=hint)


def _source(meta: Mapping[str, str], dropped: list[str], bare: bool = False) -> str:
    stored = meta.get(HF_SOURCE_METADATA_KEY)
    src = (f"transformers IJepaModel ({stored})" if stored else HF_PORT_SOURCE)
    if bare:
        src = src.replace("transformers IJepaModel", "transformers IJepaModel state dict", 1)
    if dropped:
        src += f"; ignored: {', '.join(dropped)}"
    return src


def config_for(encoder: Any) -> dict[str, Any]:
    """config.json for ``IJepaModel.from_pretrained``, from one of our encoders."""
    h, w = encoder.img_size
    return {
        "architectures": ["IJepaModel"],
        "model_type": "ijepa",
        "hidden_size": encoder.embed_dim,
        "num_hidden_layers": encoder.depth,
        "num_attention_heads": encoder.num_heads,
        "intermediate_size": encoder.blocks[0].mlp.fc1.out_features if encoder.depth else
        int(encoder.embed_dim * encoder.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": encoder.norm_eps,
        "image_size": h if h == w else [h, w],
        "patch_size": encoder.patch_size,
        "num_channels": encoder.in_chans,
        "qkv_bias": encoder.blocks[0].attn.qkv.bias is not None if encoder.depth else True,
        "dtype": "float32",
    }


def preprocessor_config_for(spec: Mapping[str, Any]) -> dict[str, Any]:
    h, w = spec["image_size"]
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": h, "width": w},
        "resample": PIL_BICUBIC,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(spec["mean"]),
        "image_std": list(spec["std"]),
    }


# What an export folder holds: what we write (the model card too), and the other weight layouts an earlier export
# there may have used. A folder holding anything else is not replaced (io.check_replaceable).
HF_EXPORT_FILES = ("config.json", "preprocessor_config.json", "README.md", *HF_WEIGHT_FILES)


def check_export_folder(dst: str | os.PathLike) -> Path:
    """``dst`` if a transformers export may be written there (see :func:`ijepa.io.check_replaceable`)."""
    return check_replaceable(dst, HF_EXPORT_FILES, "transformers export")


def write_hf_folder(dst: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                    config: Mapping[str, Any], preprocessor: Mapping[str, Any], card: str | None = None) -> Path:
    """A transformers folder written whole: filled under a temporary name beside ``dst`` and renamed into place,
    config.json last, so that a folder at ``dst`` with a config.json is always a complete one (transformers loads
    any folder that has one). ``card``: the model card, ``README.md`` (``modelcard.py``)."""
    with atomic_folder(dst, HF_EXPORT_FILES, "transformers export") as tmp:
        if card is not None:
            atomic_write_text(tmp / "README.md", card)
        write_safetensors(tensors, tmp / "model.safetensors", metadata)
        atomic_write_json(tmp / "preprocessor_config.json", dict(preprocessor))
        atomic_write_json(tmp / "config.json", dict(config))
    return Path(dst)


def save_hf(encoder: Any, dst: str | os.PathLike, source: str | None = None, card: str | None = None) -> Path:
    """Write a directory that ``transformers.IJepaModel.from_pretrained(dst)`` loads with no code of ours:
    config.json, model.safetensors (hub layout), preprocessor_config.json (the encoder's input_spec) and, given
    ``card``, README.md, written whole (:func:`write_hf_folder`)."""
    check_export_folder(dst)
    stated = source or getattr(encoder, "source", "") or "ijepa export"
    return write_hf_folder(dst, to_hf(encoder.state_dict()), {"format": "pt", HF_SOURCE_METADATA_KEY: stated},
                           config_for(encoder), preprocessor_config_for(declared_spec(encoder)), card)


__all__ = ["HF_EXPORT_FILES", "HF_HUB_BLOCK", "HF_HUB_QKV", "HF_MEM_BLOCK", "HF_MEM_QKV", "HF_TOP", "arch_from_config",
           "check_export_folder", "from_hf", "is_hf_config", "looks_like_hf", "read_hf_dir", "read_hf_state", "save_hf",
           "to_hf", "write_hf_folder"]
