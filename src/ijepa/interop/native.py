"""Our own layout, which every other format is converted to: errors, safe readers, architecture inference,
the strict build of an encoder/predictor from a state dict, our training checkpoints and our ``.safetensors``
export.

Parameter names are the reference's (``patch_embed.proj``, ``pos_embed``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``; predictor ``predictor_embed``,
``mask_token``, ``predictor_pos_embed``, ``predictor_blocks.N.…``, ``predictor_norm``, ``predictor_proj``), so
a state dict in "our" layout is also a reference state dict without DDP's ``module.`` prefix, and — key for
key — a timm I-JEPA ViT's.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointReadError,
    UnsafeCheckpointError,
)
from ..models.pos_embed import resample_pos_embed
from ..models.predictor import VisionTransformerPredictor
from ..models.vit import IMAGENET_MEAN, IMAGENET_STD, VIT_SIZES, VisionTransformer, arch_name, to_2tuple

StateDict = dict[str, torch.Tensor]

NATIVE_FORMAT = "ijepa"
NATIVE_EXPORT_VERSION = "1"
# Wrappers that training code adds in front of parameter names: DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# In our export the predictor shares the file with the encoder; its names are prefixed so that the encoder
# part stays a plain reference/timm state dict.
PREDICTOR_PREFIX = "predictor."
ENCODER_ARCH_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                     "qkv_bias", "norm_eps")
PREDICTOR_ARCH_KEYS = ("grid_size", "embed_dim", "predictor_embed_dim", "depth", "num_heads", "mlp_ratio",
                       "qkv_bias", "norm_eps", "one_pass")
# Head count is the one architectural field the weights do not record (it only changes how qkv is split), so
# for a width in the size registry we take the registry's count.
HEADS_BY_WIDTH: dict[int, int] = {dim: heads for dim, _, heads, _ in VIT_SIZES.values()}


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------

# A checkpoint that cannot be read, is not a format we know, or does not fit the requested model: the package's
# one checkpoint error (ijepa.errors), under the name this module has always exported.
InteropError = CheckpointError


class UnknownFormatError(InteropError):
    """Readable, but none of the layouts we know (reference, transformers, timm, ours)."""


def _preview(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", … (+{len(names) - n} more)" if len(names) > n else "")


class CheckpointMismatchError(InteropError):
    """The weights do not fit the model: names the missing, unexpected and mis-shaped keys (first few of each,
    with counts). Raised instead of any partial load."""

    def __init__(self, what: str, target: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_preview(unexpected)}")
        if mismatched:
            shapes = [f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched]
            parts.append(f"{len(mismatched)} mis-shaped: {_preview(shapes, 3)}")
        self.summary = f"{what} does not fit {target}: " + "; ".join(parts) + "."
        super().__init__(self.summary
                         + " Pass the right arch=..., or strict=False to load only the matching keys.")


# ----------------------------------------------------------------------------------------------------------
# what a reader returns
# ----------------------------------------------------------------------------------------------------------

@dataclass
class Weights:
    """A checkpoint translated to our names, plus whatever it says about the architecture and the input."""

    encoder: StateDict
    source: str
    path: str
    predictor: StateDict | None = None
    # arch fields the file states (config.json, metadata), as opposed to what the weights show
    encoder_hint: dict[str, Any] = field(default_factory=dict)
    predictor_hint: dict[str, Any] = field(default_factory=dict)
    input_spec: dict[str, Any] | None = None


# ----------------------------------------------------------------------------------------------------------
# reading files safely
# ----------------------------------------------------------------------------------------------------------

def check_exists(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointNotFoundError(f"no checkpoint at {p}: the path does not exist")
    return p


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` — never anything else — and errors that name the file.

    Zip-format files are memory-mapped, so reading one encoder out of a 10 GB reference checkpoint does not
    load the optimizer state into memory."""
    p = check_exists(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            # torch words this "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module..."
            m = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), flags=re.IGNORECASE)
            what = f" (it references {m.group(1)})" if m else ""
            raise UnsafeCheckpointError(
                f"refused to unpickle {p}: it holds objects other than tensors and plain containers{what}, "
                "and loading those would run code from the file. If you trust it, torch.load(..., "
                "weights_only=False) it yourself and pass the state dict to ijepa.interop.load.") from None
        raise CheckpointReadError(
            f"cannot read {p}: not a valid PyTorch checkpoint ({_first_line(e)})") from None
    except Exception as e:  # torch raises OSError, RuntimeError, KeyError... for torn or foreign files
        raise CheckpointReadError(
            f"cannot read {p}: the file is truncated, corrupt or not a PyTorch checkpoint ({_first_line(e)})"
        ) from None


def read_safetensors(path: str | os.PathLike) -> tuple[StateDict, dict[str, str]]:
    """All tensors of a ``.safetensors`` file and its string metadata."""
    from safetensors import safe_open

    p = check_exists(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # SafetensorError for a torn header, OSError for unreadable files
        raise CheckpointReadError(
            f"cannot read {p}: the file is truncated, corrupt or not a safetensors file ({_first_line(e)})"
        ) from None


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    p = check_exists(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointReadError(
            f"cannot read {p}: the file is truncated, corrupt or not a safetensors file ({_first_line(e)})"
        ) from None


def read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointReadError(f"cannot read {path}: {_first_line(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointReadError(f"{path} does not hold a JSON object")
    return obj


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write through a temporary file and rename, so an interrupted export never leaves a torn file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata or {}))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------
# state-dict helpers
# ----------------------------------------------------------------------------------------------------------

def tensors_only(obj: Mapping[str, Any], what: str) -> StateDict:
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UnknownFormatError(
            f"{what} is not a state dict: {_preview([str(k) for k in bad])} are not tensors")
    return dict(obj)


def strip_wrappers(sd: Mapping[str, torch.Tensor]) -> StateDict:
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        out[k] = v
    return out


def split_predictor(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """Separate predictor parameters (our names) from encoder parameters in one flat dict."""
    enc, pred = {}, {}
    for k, v in sd.items():
        if k.startswith(PREDICTOR_PREFIX):
            pred[k[len(PREDICTOR_PREFIX):]] = v
        elif k.startswith("predictor_") or k == "mask_token":
            pred[k] = v
        else:
            enc[k] = v
    return enc, pred


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


def infer_encoder_arch(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture fields readable from the weights alone (no head count; img_size only for a square
    grid)."""
    a: dict[str, Any] = {}
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        a.update(embed_dim=w.shape[0], in_chans=w.shape[1], patch_size=w.shape[-1])
    elif "pos_embed" in sd:
        a["embed_dim"] = sd["pos_embed"].shape[-1]
    depth = _count(sd, r"blocks\.(\d+)\.")
    if depth:
        a["depth"] = depth
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.ndim == 2:
        a["mlp_ratio"] = exact_ratio(fc1.shape[0], fc1.shape[1])
    if "blocks.0.attn.qkv.weight" in sd:
        a["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
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
    depth = _count(sd, r"predictor_blocks\.(\d+)\.")
    if depth:
        a["depth"] = depth
    fc1 = sd.get("predictor_blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.ndim == 2:
        a["mlp_ratio"] = exact_ratio(fc1.shape[0], fc1.shape[1])
    if "predictor_blocks.0.attn.qkv.weight" in sd:
        a["qkv_bias"] = "predictor_blocks.0.attn.qkv.bias" in sd
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


def _grid(img_size: Any, patch: int) -> tuple[int, int]:
    h, w = to_2tuple(img_size)
    return (h // patch, w // patch)


def normalise_input_spec(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not spec:
        return None
    out = dict(spec)
    if "image_size" in out:
        out["image_size"] = to_2tuple(out["image_size"])
    for k in ("mean", "std"):
        if k in out and out[k] is not None:
            out[k] = tuple(float(v) for v in out[k])
    if "in_chans" in out:
        out["in_chans"] = int(out["in_chans"])
    return out


def default_input_spec(img_size: Any, in_chans: int) -> dict[str, Any]:
    # The reference trained (and evaluated) with ImageNet statistics.
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,) * in_chans, (0.5,) * in_chans)
    return {"image_size": to_2tuple(img_size), "in_chans": in_chans, "mean": mean, "std": std}


# ----------------------------------------------------------------------------------------------------------
# building models from weights
# ----------------------------------------------------------------------------------------------------------

def _natural(key: str) -> list[Any]:
    # blocks.2 before blocks.10, so the first names listed in an error are the first layers
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _fit(model_shapes: Mapping[str, torch.Size], sd: Mapping[str, torch.Tensor]):
    missing = sorted((k for k in model_shapes if k not in sd), key=_natural)
    unexpected = sorted((k for k in sd if k not in model_shapes), key=_natural)
    mismatched = [(k, tuple(sd[k].shape), tuple(s)) for k, s in model_shapes.items()
                  if k in sd and tuple(sd[k].shape) != tuple(s)]
    return missing, unexpected, mismatched


def _describe(kind: str, a: Mapping[str, Any]) -> str:
    fields = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in a.items())
    return f"{kind}({fields})"


def _materialise(cls: type, kwargs: dict[str, Any], sd: StateDict, strict: bool, what: str):
    """Build ``cls(**kwargs)`` holding exactly ``sd``: strict -> every key must fit (one error listing the
    rest); non-strict -> matching keys load, the others keep their initialisation, and a warning lists
    them."""
    with torch.device("meta"):  # shapes only: no time spent initialising weights about to be replaced
        probe = cls(**kwargs)
    shapes = {k: v.shape for k, v in probe.state_dict().items()}
    missing, unexpected, mismatched = _fit(shapes, sd)
    target = _describe(cls.__name__, kwargs)
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatchError(what, target, missing, unexpected, mismatched)
    if not (missing or unexpected or mismatched):
        # Fresh fp32 copies: the model must not alias a caller's tensors or a memory-mapped file.
        probe.load_state_dict({k: v.detach().to(torch.float32, copy=True) for k, v in sd.items()},
                              strict=True, assign=True)
        return probe
    summary = CheckpointMismatchError(what, target, missing, unexpected, mismatched).summary
    warnings.warn(summary + " Loaded the matching keys only (strict=False).", stacklevel=3)
    model = cls(**kwargs)
    bad = {k for k, _, _ in mismatched}
    model.load_state_dict({k: v for k, v in sd.items() if k in shapes and k not in bad}, strict=False)
    return model


def build_encoder_from_weights(w: Weights, arch: Mapping[str, Any] | None = None, img_size: Any = None,
                               strict: bool = True) -> VisionTransformer:
    """Resolve the architecture (explicit ``arch`` > what the file states > what the weights show) and build.

    When the requested resolution differs from the stored position table, the table is resampled exactly as
    ``VisionTransformer.forward`` would resample it on the fly, so features are the same either way."""
    explicit = dict(arch or {})
    inferred = infer_encoder_arch(w.encoder)
    a: dict[str, Any] = {"in_chans": 3, "mlp_ratio": 4.0, "qkv_bias": True, "norm_eps": 1e-6}
    a.update(inferred)
    a.update({k: v for k, v in w.encoder_hint.items() if k in ENCODER_ARCH_KEYS})
    a.update({k: v for k, v in explicit.items() if k != "img_size"})
    what = f"{w.source} ({w.path})"
    if "embed_dim" not in a or "patch_size" not in a:
        raise UnknownFormatError(f"{what}: no patch embedding in the weights, so the encoder's width and "
                                 "patch size are unknown")
    if "num_heads" not in a:
        a["num_heads"] = default_heads(a["embed_dim"], what)
    a.setdefault("depth", 0)

    sd = dict(w.encoder)
    notes = []
    pos = sd.get("pos_embed")
    stored = w.encoder_hint.get("img_size") or inferred.get("img_size")
    wanted = img_size or explicit.get("img_size") or stored
    if wanted is None:
        n = pos.shape[1] if pos is not None else 0
        raise InteropError(f"{what}: {n} position embeddings do not form a square grid, so the resolution is "
                           "unknown; pass img_size=(height, width)")
    a["img_size"] = to_2tuple(wanted)
    grid = _grid(a["img_size"], a["patch_size"])
    if pos is not None and pos.ndim == 3 and pos.shape[1] != grid[0] * grid[1]:
        src = _grid(stored, a["patch_size"]) if stored else None
        if src is not None and src[0] * src[1] == pos.shape[1]:
            sd["pos_embed"] = resample_pos_embed(pos.float(), src, grid)
            notes.append(f"pos_embed resampled {src[0]}x{src[1]} -> {grid[0]}x{grid[1]}")
        # otherwise the mismatch check below names pos_embed
    enc = _materialise(VisionTransformer, {k: a[k] for k in ENCODER_ARCH_KEYS}, sd, strict, what)
    spec = normalise_input_spec(w.input_spec) or default_input_spec(a["img_size"], a["in_chans"])
    if notes:
        spec["image_size"] = a["img_size"]
    enc.input_spec = spec
    enc.source = w.source + ("; " + "; ".join(notes) if notes else "")
    return enc


def build_predictor_from_weights(w: Weights, encoder: VisionTransformer,
                                 arch: Mapping[str, Any] | None = None,
                                 strict: bool = True) -> VisionTransformerPredictor | None:
    """The predictor, sized by the file's statement or its weights; heads default to the encoder's (the
    reference's rule), the grid to the encoder's."""
    if not w.predictor:
        return None
    inferred = infer_predictor_arch(w.predictor)
    a: dict[str, Any] = {"mlp_ratio": 4.0, "qkv_bias": True, "norm_eps": encoder.norm_eps,
                         "embed_dim": encoder.embed_dim, "one_pass": False}
    a.update(inferred)
    a.update({k: v for k, v in w.predictor_hint.items() if k in PREDICTOR_ARCH_KEYS})
    a.update({k: v for k, v in (arch or {}).items() if k in PREDICTOR_ARCH_KEYS})
    what = f"{w.source} predictor ({w.path})"
    a.setdefault("depth", 0)
    a.setdefault("predictor_embed_dim", 384)
    if "num_heads" not in a:
        heads = encoder.num_heads
        a["num_heads"] = heads if a["predictor_embed_dim"] % heads == 0 else default_heads(
            a["predictor_embed_dim"], what)
    sd = dict(w.predictor)
    stored = tuple(a.get("grid_size") or ())
    a["grid_size"] = tuple(encoder.grid_size)
    pos = sd.get("predictor_pos_embed")
    n_wanted = a["grid_size"][0] * a["grid_size"][1]
    if pos is not None and pos.ndim == 3 and pos.shape[1] != n_wanted:
        if not stored:
            side = math.isqrt(pos.shape[1])
            stored = (side, side) if side * side == pos.shape[1] else ()
        if stored and stored[0] * stored[1] == pos.shape[1]:
            # Keep the predictor on the encoder's grid, resampled the same way as the encoder's table.
            sd["predictor_pos_embed"] = resample_pos_embed(pos.float(), stored, a["grid_size"])
    return _materialise(VisionTransformerPredictor, {k: a[k] for k in PREDICTOR_ARCH_KEYS}, sd, strict, what)


# ----------------------------------------------------------------------------------------------------------
# our training checkpoints (ijepa.train.checkpoint) — read here without importing the training stack
# ----------------------------------------------------------------------------------------------------------

TRAINING_CHECKPOINT_MODEL_KEYS = ("encoder", "predictor", "target_encoder")


def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == NATIVE_FORMAT and any(
        isinstance(obj.get(k), Mapping) for k in TRAINING_CHECKPOINT_MODEL_KEYS)


def read_training_checkpoint(obj: Mapping[str, Any], which: str, path: str) -> Weights:
    if not isinstance(obj.get(which), Mapping):
        held = [k for k in TRAINING_CHECKPOINT_MODEL_KEYS if isinstance(obj.get(k), Mapping)]
        raise InteropError(f"{path} has no '{which}' (it holds: {', '.join(held)})")
    arch = obj.get("arch") or {}
    where = ", ".join(f"{k} {obj[k]}" for k in ("epoch", "step") if obj.get(k) is not None)
    pred = obj.get("predictor")
    return Weights(
        encoder=strip_wrappers(tensors_only(obj[which], f"{path}['{which}']")),
        predictor=(strip_wrappers(tensors_only(pred, f"{path}['predictor']"))
                   if isinstance(pred, Mapping) else None),
        source=f"ijepa training checkpoint{f' ({where})' if where else ''}: {which}",
        path=path,
        encoder_hint=dict(arch.get("encoder") or {}),
        predictor_hint=dict(arch.get("predictor") or {}),
        input_spec=obj.get("input_spec"),
    )


# ----------------------------------------------------------------------------------------------------------
# our export: one .safetensors file, architecture and input spec as JSON metadata
# ----------------------------------------------------------------------------------------------------------

def is_native_export(meta: Mapping[str, str]) -> bool:
    return meta.get("format") == NATIVE_FORMAT


def save_native(encoder: VisionTransformer, dst: str | os.PathLike,
                predictor: VisionTransformerPredictor | None = None, source: str | None = None) -> Path:
    """Write ``encoder`` (and optionally ``predictor``, under ``predictor.``) to ``dst`` (a ``.safetensors``
    file). The encoder's tensors keep the reference/timm names, so other tools can read the file as is."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        dst = dst.with_name(dst.name + ".safetensors") if dst.suffix == "" else dst
    tensors = dict(encoder.state_dict())
    arch: dict[str, Any] = {"encoder": encoder.arch_dict()}
    if predictor is not None:
        tensors.update({PREDICTOR_PREFIX + k: v for k, v in predictor.state_dict().items()})
        arch["predictor"] = predictor.arch_dict()
    spec = normalise_input_spec(getattr(encoder, "input_spec", None)) or default_input_spec(
        encoder.img_size, encoder.in_chans)
    meta = {"format": NATIVE_FORMAT, "version": NATIVE_EXPORT_VERSION, "arch": json.dumps(arch),
            "input_spec": json.dumps(spec),
            "source": source or getattr(encoder, "source", None) or ""}
    return write_safetensors(tensors, dst, meta)


def read_native_export(sd: StateDict, meta: Mapping[str, str], path: str) -> Weights:
    try:
        arch = json.loads(meta.get("arch") or "{}")
        spec = json.loads(meta.get("input_spec") or "null")
    except ValueError as e:
        raise CheckpointReadError(f"{path}: unreadable ijepa metadata ({_first_line(e)})") from None
    enc, pred = split_predictor(sd)
    stored = meta.get("source")
    return Weights(encoder=enc, predictor=pred or None, path=path,
                   source=f"ijepa export ({stored})" if stored else "ijepa export",
                   encoder_hint=dict(arch.get("encoder") or {}),
                   predictor_hint=dict(arch.get("predictor") or {}),
                   input_spec=spec)
