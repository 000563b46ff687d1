"""What every format's reader returns — a checkpoint translated to our names — and the state-dict helpers the
readers share.

Our names are the reference's (``patch_embed.proj``, ``pos_embed``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``; predictor ``predictor_embed``,
``mask_token``, ``predictor_pos_embed``, ``predictor_blocks.N.…``, ``predictor_norm``, ``predictor_proj``), so
a state dict in our layout is also a reference state dict without DDP's ``module.`` prefix, and — key for key —
a timm I-JEPA ViT's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CheckpointError, UnknownFormatError, preview
from ..spec import InputSpec

StateDict = dict[str, torch.Tensor]

# Files holding both encoders (the reference's, our training checkpoints) give one of these.
WHICH_CHOICES = ("target_encoder", "encoder")
# Wrappers that training code adds in front of parameter names: DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where the predictor shares a flat file with the encoder (our export), its names carry this prefix, so that the
# encoder part stays a plain reference/timm state dict.
PREDICTOR_PREFIX = "predictor."


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
    input_spec: Mapping[str, Any] | None = None


def check_which(which: str) -> str:
    if which not in WHICH_CHOICES:
        raise CheckpointError(f"which={which!r}: choose 'target_encoder' (the EMA encoder the paper evaluates) "
                              "or 'encoder' (the context encoder)")
    return which


def tensors_only(obj: Mapping[str, Any], what: str) -> StateDict:
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UnknownFormatError(f"{what} is not a state dict: {preview([str(k) for k in bad])} are not tensors")
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


def state_dict(obj: Mapping[str, Any], what: str) -> StateDict:
    """A saved module's entry -> our names: tensors only, wrapper prefixes removed."""
    return strip_wrappers(tensors_only(obj, what))


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


def declared_spec(encoder: Any) -> InputSpec:
    """The input spec an encoder declares, completed by the one default rule at its own size and channels."""
    return InputSpec.coerce(getattr(encoder, "input_spec", None), image_size=encoder.img_size,
                            in_chans=encoder.in_chans)
