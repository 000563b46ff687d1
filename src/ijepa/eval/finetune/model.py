"""The fine-tuned model: an encoder and a linear head on its mean-pooled patch tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...data.preprocess import resolve_input_spec


class ClassifierModel(nn.Module):
    """``head(mean over tokens of encoder(x))``: transformers' ``IJepaForImageClassification``, on our encoder.

    ``encoder``: a :class:`ijepa.models.vit.VisionTransformer` (or any module returning (B, N, D) tokens and
    having ``embed_dim``). ``forward`` takes normalised images (see :func:`ijepa.data.preprocess.prepare_images` and
    ``input_spec``) and returns logits (B, num_classes). ``id2label`` (optional) names the classes.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, head_init_std: float = 2e-5,
                 id2label: dict[int, str] | None = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.embed_dim), int(num_classes))
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        self.id2label = dict(id2label) if id2label else None

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def input_spec(self) -> dict[str, Any]:
        return resolve_input_spec(self.encoder)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, D): the mean of the last layer's layer-normed patch tokens."""
        return self.encoder(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth on an existing encoder: block ``i`` of ``L`` drops with ``rate * i / (L - 1)`` (the
    rule ``VisionTransformer(drop_path_rate=...)`` uses at construction)."""
    blocks = list(getattr(encoder, "blocks", []))
    for i, blk in enumerate(blocks):
        dp = getattr(blk, "drop_path", None)
        if dp is None or not hasattr(dp, "p"):
            if rate > 0:
                raise TypeError(f"{type(blk).__name__} has no drop_path module; use drop_path=0")
            continue
        dp.p = float(rate) * i / max(len(blocks) - 1, 1)
