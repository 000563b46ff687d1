"""Fixed 2-D sin-cos position embeddings and their resampling to other grids.

Values equal the reference's (computed in float64, then cast): for a grid of h×w patches, the first half of
the channels encodes the patch's column and the second half its row, each as [sin(pos·ω), cos(pos·ω)] with
ω_k = 10000^(-k / (D/4)). The reference builds its grid with ``meshgrid(w, h)``, which is why the column comes
first; keeping that order is what lets its checkpoints (which store the table) and ours agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1, 1).double() * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int | tuple[int, int]) -> torch.Tensor:
    """(h·w, dim) float32 table for a grid of ``grid_size`` = (h, w) patches, row-major patch order."""
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    return emb.float()


def resample_pos_embed(pos_embed: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]
                       ) -> torch.Tensor:
    """Bicubic resampling of a (1, h·w, D) table to another grid, square or not.

    Same operation as transformers' ``IJepaEmbeddings.interpolate_pos_encoding`` and timm's ``resample_abs_pos_embed``
    (bicubic, align_corners=False, target size given explicitly), so features match theirs at any resolution.
    """
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    d = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, src_grid[0], src_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(dst_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst_grid[0] * dst_grid[1], d).to(pos_embed.dtype)
