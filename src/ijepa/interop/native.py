"""Our own formats: training checkpoints (``ijepa.train.checkpoint``, read here without importing the training
stack) and our export, one ``.safetensors`` file with the architecture and input spec as JSON metadata.

Both keep our names (see :mod:`.weights`), so the only key map is the export's ``predictor.`` prefix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, CheckpointReadError, first_line
from ..io import write_safetensors
from ..models.predictor import VisionTransformerPredictor
from ..models.vit import VisionTransformer
from .weights import PREDICTOR_PREFIX, StateDict, Weights, declared_spec, split_predictor, state_dict

NATIVE_FORMAT = "ijepa"
NATIVE_EXPORT_VERSION = "1"
TRAINING_CHECKPOINT_MODEL_KEYS = ("encoder", "predictor", "target_encoder")


# ---------------------------------------------------------------------------------------- training checkpoints

def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == NATIVE_FORMAT and any(
        isinstance(obj.get(k), Mapping) for k in TRAINING_CHECKPOINT_MODEL_KEYS)


def read_training_checkpoint(obj: Mapping[str, Any], which: str, path: str) -> Weights:
    if not isinstance(obj.get(which), Mapping):
        held = [k for k in TRAINING_CHECKPOINT_MODEL_KEYS if isinstance(obj.get(k), Mapping)]
        raise CheckpointError(f"{path} has no '{which}' (it holds: {', '.join(held)})")
    arch = obj.get("arch") or {}
    where = ", ".join(f"{k} {obj[k]}" for k in ("epoch", "step") if obj.get(k) is not None)
    pred = obj.get("predictor")
    return Weights(
        encoder=state_dict(obj[which], f"{path}['{which}']"),
        predictor=state_dict(pred, f"{path}['predictor']") if isinstance(pred, Mapping) else None,
        source=f"ijepa training checkpoint{f' ({where})' if where else ''}: {which}",
        path=path,
        encoder_hint=dict(arch.get("encoder") or {}),
        predictor_hint=dict(arch.get("predictor") or {}),
        input_spec=obj.get("input_spec"),
    )


# ---------------------------------------------------------------------------------------------- our export

def is_native_export(meta: Mapping[str, str]) -> bool:
    return meta.get("format") == NATIVE_FORMAT


def read_native_export(sd: StateDict, meta: Mapping[str, str], path: str) -> Weights:
    try:
        arch = json.loads(meta.get("arch") or "{}")
        spec = json.loads(meta.get("input_spec") or "null")
    except ValueError as e:
        raise CheckpointReadError(f"{path}: unreadable ijepa metadata ({first_line(e)})") from None
    enc, pred = split_predictor(sd)
    stored = meta.get("source")
    return Weights(encoder=enc, predictor=pred or None, path=path,
                   source=f"ijepa export ({stored})" if stored else "ijepa export",
                   encoder_hint=dict(arch.get("encoder") or {}),
                   predictor_hint=dict(arch.get("predictor") or {}),
                   input_spec=spec)


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
    meta = {"format": NATIVE_FORMAT, "version": NATIVE_EXPORT_VERSION, "arch": json.dumps(arch),
            "input_spec": json.dumps(declared_spec(encoder).to_dict()),
            "source": source or getattr(encoder, "source", None) or ""}
    return write_safetensors(tensors, dst, meta)
