"""What every trainer here shares about optimisation: the warm-up + cosine schedule, AdamW parameter groups
with one no-weight-decay rule (and optional layer-wise lr decay), and applying a scheduled lr to the groups.

Pretraining, fine-tuning, the attentive probe and the pixel decoder all use these; none keeps a copy.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn as nn

__all__ = ["layer_id", "no_weight_decay", "param_groups", "set_lr", "warmup_cosine"]

# Tables that sit before the first block: layer 0 for layer-wise lr decay.
EMBED_TABLES = ("pos_embed", "cls_token", "mask_token")


def warmup_cosine(step: float, total_steps: float, warmup_steps: float, peak: float, *, start: float = 0.0,
                  final: float = 0.0, warmup_offset: int = 0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then half-cosine from ``peak`` to ``final``
    at ``total_steps`` and ``final`` after it (never below it).

    ``warmup_offset=1`` makes the first step already take one warm-up increment (``peak / warmup_steps`` from
    ``start=0``: the fine-tuning convention, MAE's); 0 starts at ``start`` exactly (the reference's pretraining).
    Steps may be fractions (a schedule over a time budget: ``total_steps=1.0``)."""
    if step < warmup_steps:
        return start + (peak - start) * (step + warmup_offset) / warmup_steps
    span = total_steps - warmup_steps
    progress = (step - warmup_steps) / (span if span > 0 else 1)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return max(final, final + (peak - final) * cos)


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    """The one rule, the reference's: biases and 1-D parameters (norm scales and shifts) get no weight decay."""
    return p.ndim <= 1 or name.endswith(".bias")


def layer_id(name: str, num_layers: int) -> int:
    """A ViT parameter's layer for lr decay: patch embedding and position/token tables 0, ``blocks.i`` ``i + 1``,
    everything after the blocks (final norm, a head) ``num_layers + 1``. A leading ``encoder.`` is ignored."""
    n = name.removeprefix("encoder.")
    if n.startswith("patch_embed.") or n in EMBED_TABLES:
        return 0
    m = re.match(r"blocks\.(\d+)\.", n)
    return int(m.group(1)) + 1 if m else num_layers + 1


def param_groups(module: nn.Module, weight_decay: float, *, layer_decay: float | None = None,
                 num_layers: int | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``'s trainable parameters (frozen ones are left out).

    Each group is ``{"params", "names", "weight_decay", "apply_wd", "lr_scale"}``: ``weight_decay`` is
    ``weight_decay`` or 0 by :func:`no_weight_decay` (``apply_wd`` says which, for a scheduled decay),
    ``lr_scale`` multiplies the scheduled lr (:func:`set_lr`). Without ``layer_decay``: two groups, decayed first.
    With it (BEiT / MAE layer-wise decay): one group per (layer, decayed or not), ordered by layer, each with its
    ``layer_id`` and ``lr_scale = layer_decay ** (num_layers + 1 - layer_id)``; ``num_layers`` defaults to the
    block count of ``module.encoder`` or ``module``."""
    if layer_decay is not None and num_layers is None:
        num_layers = len(getattr(getattr(module, "encoder", module), "blocks", []))
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        lid = 0 if layer_decay is None else layer_id(name, num_layers)
        no_wd = no_weight_decay(name, p)
        g = groups.get((lid, no_wd))
        if g is None:
            g = groups[(lid, no_wd)] = {"params": [], "names": [], "apply_wd": not no_wd, "lr_scale": 1.0,
                                        "weight_decay": 0.0 if no_wd else float(weight_decay)}
            if layer_decay is not None:
                g.update(lr_scale=float(layer_decay) ** (num_layers + 1 - lid), layer_id=lid)
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def set_lr(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Give every group the scheduled ``lr`` (times its ``lr_scale``) and, when given, the scheduled
    ``weight_decay`` to the groups that take decay (``apply_wd``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("apply_wd"):
            group["weight_decay"] = weight_decay
