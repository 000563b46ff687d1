"""The last step of ``load``: our encoder and predictor from :class:`Weights`, strictly.

The architecture is resolved field by field — explicit ``arch`` > what the file states > what the weights show
> the reference's defaults — and the weights must then fit it key for key and shape for shape (else one
:class:`CheckpointMismatchError` naming them; ``strict=False`` loads the matching keys and warns).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CheckpointError, CheckpointMismatchError, UnknownFormatError
from ..models.pos_embed import resample_pos_embed
from ..models.predictor import VisionTransformerPredictor
from ..models.vit import VisionTransformer, to_2tuple
from ..spec import InputSpec
from .arch import (
    ENCODER_ARCH_KEYS,
    PREDICTOR_ARCH_KEYS,
    default_heads,
    infer_encoder_arch,
    infer_predictor_arch,
)
from .weights import StateDict, Weights

ENCODER_DEFAULTS: dict[str, Any] = {"in_chans": 3, "mlp_ratio": 4.0, "qkv_bias": True, "norm_eps": 1e-6}


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


def _materialise(cls: type, arch: dict[str, Any], sd: StateDict, strict: bool, what: str, **extra: Any):
    """Build ``cls(**arch, **extra)`` holding exactly ``sd``: strict -> every key must fit (one error listing
    the rest); non-strict -> matching keys load, the others keep their initialisation, and a warning lists
    them."""
    with torch.device("meta"):  # shapes only: no time spent initialising weights about to be replaced
        probe = cls(**arch, **extra)
    shapes = {k: v.shape for k, v in probe.state_dict().items()}
    missing, unexpected, mismatched = _fit(shapes, sd)
    target = _describe(cls.__name__, arch)
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatchError(what, target, missing, unexpected, mismatched)
    if not (missing or unexpected or mismatched):
        # Fresh fp32 copies: the model must not alias a caller's tensors or a memory-mapped file.
        probe.load_state_dict({k: v.detach().to(torch.float32, copy=True) for k, v in sd.items()},
                              strict=True, assign=True)
        return probe
    summary = CheckpointMismatchError(what, target, missing, unexpected, mismatched).summary
    warnings.warn(summary + " Loaded the matching keys only (strict=False).", stacklevel=3)
    model = cls(**arch, **extra)
    bad = {k for k, _, _ in mismatched}
    model.load_state_dict({k: v for k, v in sd.items() if k in shapes and k not in bad}, strict=False)
    return model


def _grid(img_size: Any, patch: int) -> tuple[int, int]:
    h, w = to_2tuple(img_size)
    return (h // patch, w // patch)


def _encoder_arch(w: Weights, explicit: Mapping[str, Any], inferred: Mapping[str, Any]) -> dict[str, Any]:
    a = dict(ENCODER_DEFAULTS)
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
    return a


def _input_spec(w: Weights, img_size: tuple[int, int], in_chans: int, resampled: bool) -> InputSpec:
    try:
        spec = InputSpec.coerce(w.input_spec, image_size=img_size, in_chans=in_chans)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{w.source} ({w.path}): unusable input_spec {w.input_spec!r} ({e})") from None
    # a resampled position table means the encoder now expects images of the requested size
    return spec.replace(image_size=img_size) if resampled else spec


def build_encoder(w: Weights, arch: Mapping[str, Any] | None = None, img_size: Any = None,
                  strict: bool = True) -> VisionTransformer:
    """Resolve the architecture and build.

    When the requested resolution differs from the stored position table, the table is resampled exactly as
    ``VisionTransformer.forward`` would resample it on the fly, so features are the same either way."""
    explicit = dict(arch or {})
    inferred = infer_encoder_arch(w.encoder)
    a = _encoder_arch(w, explicit, inferred)
    what = f"{w.source} ({w.path})"
    sd = dict(w.encoder)
    notes = []
    pos = sd.get("pos_embed")
    stored = w.encoder_hint.get("img_size") or inferred.get("img_size")
    wanted = img_size or explicit.get("img_size") or stored
    if wanted is None:
        n = pos.shape[1] if pos is not None else 0
        raise CheckpointError(f"{what}: {n} position embeddings do not form a square grid, so the resolution "
                              "is unknown; pass img_size=(height, width)")
    a["img_size"] = to_2tuple(wanted)
    grid = _grid(a["img_size"], a["patch_size"])
    if pos is not None and pos.ndim == 3 and pos.shape[1] != grid[0] * grid[1]:
        src = _grid(stored, a["patch_size"]) if stored else None
        if src is not None and src[0] * src[1] == pos.shape[1]:
            sd["pos_embed"] = resample_pos_embed(pos.float(), src, grid)
            notes.append(f"pos_embed resampled {src[0]}x{src[1]} -> {grid[0]}x{grid[1]}")
        # otherwise the mismatch check names pos_embed
    spec = _input_spec(w, a["img_size"], a["in_chans"], resampled=bool(notes))
    enc = _materialise(VisionTransformer, {k: a[k] for k in ENCODER_ARCH_KEYS}, sd, strict, what,
                       input_spec=spec)
    enc.source = w.source + ("; " + "; ".join(notes) if notes else "")
    return enc


def build_predictor(w: Weights, encoder: VisionTransformer, arch: Mapping[str, Any] | None = None,
                    strict: bool = True) -> VisionTransformerPredictor | None:
    """The predictor, sized by the file's statement or its weights; heads default to the encoder's (the
    reference's rule), the grid to the encoder's."""
    if not w.predictor:
        return None
    a: dict[str, Any] = {"mlp_ratio": 4.0, "qkv_bias": True, "norm_eps": encoder.norm_eps,
                         "embed_dim": encoder.embed_dim, "one_pass": False}
    a.update(infer_predictor_arch(w.predictor))
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
