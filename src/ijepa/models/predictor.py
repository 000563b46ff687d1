"""The I-JEPA predictor: a narrow ViT that, given the context tokens and mask tokens at the target positions,
predicts the target encoder's representations there. Parameter names follow the reference's.

Two ways to run it, same weights:
- per target (the reference's): one sequence per target block, context tokens + that block's mask tokens, all
  attending to all. The context is processed once per target block.
- one pass (``one_pass=True``): one sequence per image, context tokens + every block's mask tokens, with an
  attention mask: context tokens attend to the context only, a block's mask tokens to the context and their own
  block. Each block's prediction then depends on the context and itself alone, as before, but the context is
  processed once, so the predictor's tokens fall from M·(C + K) to C + M·K. What changes: context tokens no
  longer see the mask tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .pos_embed import sincos_2d
from .vit import Block, apply_masks, init_vit_weights, to_2tuple


class VisionTransformerPredictor(nn.Module):
    def __init__(self, grid_size: int | Sequence[int], embed_dim: int = 768, predictor_embed_dim: int = 384,
                 depth: int = 6, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, init_std: float = 0.02,
                 one_pass: bool = False):
        super().__init__()
        self.one_pass = one_pass
        self.grid_size = to_2tuple(grid_size)
        self.embed_dim = embed_dim
        self.predictor_embed_dim = predictor_embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.norm_eps = norm_eps
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
        self.predictor_pos_embed = nn.Parameter(sincos_2d(predictor_embed_dim, self.grid_size)[None],
                                                requires_grad=False)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay rule
        self.predictor_blocks = nn.ModuleList(
            Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], 0.0, norm_eps) for i in range(depth))
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=norm_eps)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim)
        init_vit_weights(self, self.predictor_blocks, init_std)
        nn.init.trunc_normal_(self.mask_token, std=init_std)

    @property
    def depth(self) -> int:
        return len(self.predictor_blocks)

    def forward(self, x: torch.Tensor, masks_x: torch.Tensor | Sequence[torch.Tensor],
                masks: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """x: context tokens (len(masks_x)·B, Kx, D) from the encoder run on ``masks_x``; ``masks``: target ids,
        each (B, K). Returns predictions (len(masks)·len(masks_x)·B, K, D), ordered as
        ``apply_masks(targets, masks)`` repeated for each context mask — the reference's order."""
        masks_x = [masks_x] if isinstance(masks_x, torch.Tensor) else list(masks_x)
        masks = [masks] if isinstance(masks, torch.Tensor) else list(masks)
        n_ctx_masks = len(masks_x)
        B = x.shape[0] // n_ctx_masks
        pos = self.predictor_pos_embed.expand(B, -1, -1)

        x = self.predictor_embed(x) + apply_masks(pos, masks_x)
        n_ctx = x.shape[1]
        # Mask tokens carry only their position; one row of predictions per (target mask, context mask) pair.
        pred_pos = apply_masks(pos, masks)  # (len(masks)·B, K, d)
        if self.one_pass:
            return self._forward_one_pass(x, pred_pos, len(masks), n_ctx_masks, B)
        pred_pos = pred_pos.view(len(masks), 1, B, *pred_pos.shape[1:]).expand(-1, n_ctx_masks, -1, -1, -1)
        pred_tokens = self.mask_token + pred_pos.reshape(-1, *pred_pos.shape[3:])
        x = torch.cat([x.repeat(len(masks), 1, 1), pred_tokens], dim=1)
        for blk in self.predictor_blocks:
            x = blk(x)
        return self.predictor_proj(self.predictor_norm(x[:, n_ctx:]))

    def _forward_one_pass(self, x: torch.Tensor, pred_pos: torch.Tensor, n_pred: int, n_ctx_masks: int,
                          B: int) -> torch.Tensor:
        n_ctx, K = x.shape[1], pred_pos.shape[1]
        # (M·B, K, d) -> (B, M·K, d): each image's blocks side by side; repeated for each context mask.
        tokens = self.mask_token + pred_pos.view(n_pred, B, K, -1).transpose(0, 1).reshape(B, n_pred * K, -1)
        x = torch.cat([x, tokens.repeat(n_ctx_masks, 1, 1)], dim=1)
        # group id: -1 for context tokens, m for block m's mask tokens. Query attends key iff the key is context
        # or in the query's own block (so context queries see the context only).
        group = torch.arange(n_pred, device=x.device).repeat_interleave(K)
        group = torch.cat([group.new_full((n_ctx,), -1), group])
        attn_mask = (group[None, :] == -1) | (group[None, :] == group[:, None])
        for blk in self.predictor_blocks:
            x = blk(x, attn_mask)
        out = self.predictor_proj(self.predictor_norm(x[:, n_ctx:]))  # (n_ctx_masks·B, M·K, D)
        # back to the per-target order: target mask, then context mask, then image
        out = out.view(n_ctx_masks, B, n_pred, K, -1).permute(2, 0, 1, 3, 4)
        return out.reshape(n_pred * n_ctx_masks * B, K, -1)

    def arch_dict(self) -> dict:
        return {"grid_size": list(self.grid_size), "embed_dim": self.embed_dim,
                "predictor_embed_dim": self.predictor_embed_dim, "depth": self.depth, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "norm_eps": self.norm_eps, "one_pass": self.one_pass}


def build_predictor(encoder: nn.Module | None = None, *, grid_size: int | Sequence[int] | None = None,
                    embed_dim: int | None = None, predictor_embed_dim: int = 384, depth: int = 6,
                    num_heads: int | None = None, **kwargs) -> VisionTransformerPredictor:
    """A predictor sized for ``encoder`` (its grid, width and — as the reference does — its head count), or from
    explicit fields.

    Args:
        encoder: the encoder whose grid, width and head count the predictor takes (explicit fields win).
        grid_size: the patch grid, one side or ``(height, width)``, without ``encoder``.
        embed_dim: the encoder's width, without ``encoder``.
        predictor_embed_dim: the predictor's own width.
        depth: predictor blocks.
        num_heads: attention heads (default: the encoder's, else 12).
        **kwargs: further fields of ``VisionTransformerPredictor``.

    Returns:
        The ``VisionTransformerPredictor``, with random weights.

    Raises:
        ValueError: neither ``encoder`` nor both ``grid_size`` and ``embed_dim`` were given.
    """
    if encoder is not None:
        grid_size = grid_size or encoder.grid_size
        embed_dim = embed_dim or encoder.embed_dim
        num_heads = num_heads or encoder.num_heads
    if grid_size is None or embed_dim is None:
        raise ValueError("build_predictor needs an encoder, or grid_size and embed_dim")
    return VisionTransformerPredictor(grid_size, embed_dim, predictor_embed_dim, depth, num_heads or 12, **kwargs)
