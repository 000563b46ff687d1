"""The reference's checkpoints (facebookresearch/ijepa ``src/train.py``: ``IN1K-vit.h.14-300e.pth.tar``
and the other published files).

A ``torch.save``d dict. Model entries are state dicts saved from DDP-wrapped modules, so every name starts
with ``module.``; after that prefix the names are ours (the models in ``ijepa.models`` keep the reference's
names), so the key map is :func:`.weights.strip_wrappers`. The rest is training state we do not need to build
a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from .weights import Weights, check_which, state_dict

# entry -> what it is
REFERENCE_MODEL_ENTRIES: dict[str, str] = {
    "encoder": "context encoder (trained by gradient; what timm's and transformers' ports carry)",
    "target_encoder": "target encoder (EMA of the context encoder; what the paper evaluates)",
    "predictor": "predictor (narrow ViT; pairs with the context encoder)",
}
REFERENCE_OTHER_ENTRIES: tuple[str, ...] = ("opt", "scaler", "epoch", "loss", "batch_size", "world_size",
                                            "lr")


def is_reference(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping)
                                            for k in ("encoder", "target_encoder"))


def read_reference(obj: Mapping[str, Any], which: str, path: str) -> Weights:
    check_which(which)
    if not isinstance(obj.get(which), Mapping):
        held = [k for k in REFERENCE_MODEL_ENTRIES if isinstance(obj.get(k), Mapping)]
        raise CheckpointError(f"{path} has no '{which}' entry (it holds: {', '.join(held)}); pass which='"
                              f"{held[0]}'" if held else f"{path} holds no encoder")
    pred = obj.get("predictor")
    epoch = obj.get("epoch")
    return Weights(
        encoder=state_dict(obj[which], f"{path}['{which}']"),
        predictor=state_dict(pred, f"{path}['predictor']") if isinstance(pred, Mapping) else None,
        source=f"reference .pth.tar{f' (epoch {epoch})' if isinstance(epoch, int) else ''}: {which}",
        path=path,
    )


__all__ = ["REFERENCE_MODEL_ENTRIES", "REFERENCE_OTHER_ENTRIES", "is_reference", "read_reference"]
