"""The space the predictor regresses: the target encoder's tokens under the paper's per-token layer norm.

One function, so the loss (``ijepa.train.ijepa``) and the pixel decoders (``ijepa.viz``) cannot drift apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Target-encoder tokens (..., D) -> per-token layer norm without affine parameters, in fp32."""
    return F.layer_norm(tokens.float(), tokens.shape[-1:])
