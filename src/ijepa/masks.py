"""Multi-block mask sampling for I-JEPA: one or more large context blocks and several target blocks per image.

Masks are LongTensors of patch ids on an H×W patch grid, row-major (``id = row * W + col``), sorted ascending
within each row; every mask at the same mask index has the same length across the batch, so it stacks into a
``(B, K)`` tensor.

Two modes:

``"reference"``
    Reproduces ``MaskCollator`` of facebookresearch/ijepa (``src/masks/multiblock.py``) draw for draw, defects
    included, for bit-exact comparisons with the published recipe. The one necessary change: the reference
    takes block sizes from a seeded ``torch.Generator`` but block positions from the *global* RNG; here both
    come from the generator passed in, positions right after the two size draws, in the reference's order. It
    therefore equals the reference run with its global RNG and ``g`` being one and the same stream.
``"default"``
    The corrected sampler, vectorised over the batch. It fixes the reference's known defects:

    * positions exclude the last patch row/column (``randint`` upper bound is exclusive; ijepa #40, #59), and
      ``while h >= height`` shrinks a full-height block, so at 16×16 the context is always the top-left 15×15;
    * scale and aspect ratio come from one shared uniform draw, so only a handful of target shapes ever occur;
    * every context mask is truncated to the batch's shortest, which drops about a third of the context
      patches, always the highest ids (bottom rows; ijepa #60);
    * a target block of at most ``min_keep`` patches makes the rejection loop spin forever (ijepa #68).

The sampler never touches the global RNG: the training loop passes a generator it seeds from (seed, rank,
step), which gives exact resume and per-rank geometry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from .config_sections import MaskConfig
from .mask_geometry import geometry_problem, reference_block_size, reference_hang_message

__all__ = ["MaskConfig", "MultiBlockMaskSampler"]

# Re-draws of the failing images' positions before giving up (default mode). Workable configs need a redraw
# for a small fraction of images, so failing 100 in a row means the config is hopeless, not unlucky.
_MAX_TRIES = 100
# The reference's rejection loop relaxes the acceptable regions after this many consecutive failures.
_REF_TIMEOUT = 20
# Elements per op below which torch stays single-threaded (half its GRAIN_SIZE of 32768, for margin).
_SERIAL_NUMEL = 16384


class MultiBlockMaskSampler:
    """Samples I-JEPA context and target masks for a batch on a ``grid_size`` patch grid.

    All randomness comes from the generator given to :meth:`__call__` (a CPU ``torch.Generator``), so the
    output is a pure function of the generator's state. Configs that can never produce valid masks raise
    ``ValueError`` here (:func:`ijepa.mask_geometry.geometry_problem` decides, the same check the config runs at
    load time); configs that fail by bad luck raise ``ValueError`` at sampling time after a bounded
    number of retries (default mode) or where the reference would loop forever (reference mode).
    """

    def __init__(self, grid_size: int | Sequence[int], cfg: MaskConfig | None = None):
        if isinstance(grid_size, int) and not isinstance(grid_size, bool):
            grid_size = (grid_size, grid_size)
        try:
            height, width = (int(v) for v in grid_size)
        except (TypeError, ValueError) as e:
            raise ValueError(f"grid_size must be an int or a pair of ints, got {grid_size!r}") from e
        if height < 1 or width < 1:
            raise ValueError(f"grid_size must be positive, got {grid_size!r}")
        # A private copy: the geometry checks below must stay true of the config actually used.
        self.cfg = dataclasses.replace(cfg) if cfg is not None else MaskConfig()
        self.height, self.width = height, width
        self.num_patches = height * width
        problem = geometry_problem(height, width, self.cfg)
        if problem is not None:
            raise ValueError(problem.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid_size=({self.height}, {self.width}), cfg={self.cfg!r})"

    def __call__(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns (masks_enc, masks_pred): lists of length num_enc_masks / num_pred_masks of LongTensor
        (batch_size, K_i), patch ids sorted ascending within each row (the reference returns them sorted)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if self.cfg.mode == "reference":
            return self._sample_reference(batch_size, generator)
        return self._sample_default(batch_size, generator)

    # ------------------------------------------------------------------ default (corrected) mode

    def _block_hw(self, scale: torch.Tensor, aspect: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block height/width for scale s and aspect a: h·w ≈ s·N, h/w ≈ a, clamped to the grid (the formula of
        ``mask_geometry.default_block_sizes``, which decides whether a config can work)."""
        area = scale * self.num_patches
        h = torch.sqrt(area * aspect).round().long().clamp(1, self.height)
        w = torch.sqrt(area / aspect).round().long().clamp(1, self.width)
        return h, w

    def _context(
        self, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context masks (n, E, H·W) bool from (n, K) corners and (K,) sizes, targets first in K: each context
        block minus every target block unless ``allow_overlap``; and their patch counts (n, E).

        In numpy, whose elementwise ops run on one thread: on a busy CPU (data workers beside the training loop)
        each of torch's multi-threaded ops can stall for milliseconds, which made this in torch 20-40x slower
        there (27 against 0.7 ms per batch of 128 on a 9x9 grid)."""
        top, left, h, w = top.numpy(), left.numpy(), h.numpy(), w.numpy()
        rows, cols = np.arange(self.height), np.arange(self.width)
        in_rows = (rows >= top[..., None]) & (rows < (top + h)[..., None])  # (n, K, H)
        in_cols = (cols >= left[..., None]) & (cols < (left + w)[..., None])  # (n, K, W)
        blocks = in_rows[..., :, None] & in_cols[..., None, :]  # (n, K, H, W)
        npred = self.cfg.num_pred_masks
        ctx = blocks[:, npred:]
        if not self.cfg.allow_overlap:
            ctx = ctx & ~blocks[:, :npred].any(1, keepdims=True)
        ctx = ctx.reshape(*ctx.shape[:2], -1)
        return torch.from_numpy(ctx), torch.from_numpy(ctx.sum(-1))

    def _positions(
        self, n: int, h: torch.Tensor, w: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform corners over the whole grid, both ends inclusive: top ∈ [0, H−h], left ∈ [0, W−w]."""
        u = torch.rand(n, h.numel(), 2, generator=g, dtype=torch.float64)
        top_span, left_span = self.height - h + 1, self.width - w + 1
        # clamp: guards the (theoretical) u·span rounding up to span
        top = torch.minimum((u[..., 0] * top_span).long(), top_span - 1)
        left = torch.minimum((u[..., 1] * left_span).long(), left_span - 1)
        return top, left

    def _sample_default(
        self, batch_size: int, g: torch.Generator
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cfg = self.cfg
        npred, nenc = cfg.num_pred_masks, cfg.num_enc_masks
        # Sizes: one target size per batch shared by all target blocks, as in the reference — every target mask
        # then has the same length, so the predictor runs all of them as one batch and no target patch is cut —
        # but with scale and aspect from independent draws. The context block is square, as in the reference.
        su = torch.rand(2, generator=g, dtype=torch.float64)
        th, tw = self._block_hw(_lerp(cfg.pred_mask_scale, su[:1]), _lerp(cfg.aspect_ratio, su[1:]))
        th, tw = th.expand(npred), tw.expand(npred)
        cu = torch.rand(nenc, generator=g, dtype=torch.float64)
        ch, cw = self._block_hw(_lerp(cfg.enc_mask_scale, cu), torch.ones_like(cu))
        h, w = torch.cat([th, ch]), torch.cat([tw, cw])

        top, left = self._positions(batch_size, h, w, g)
        ctx, keep = self._context(top, left, h, w)  # (B, nenc, H·W), (B, nenc)
        failing = (keep < cfg.min_keep).any(1).nonzero().squeeze(1)
        tries = 0
        # Rejection on whole images (targets and contexts together), vectorised over the failing ones only:
        # the accepted geometry is uniform over the valid placements.
        while failing.numel() and tries < _MAX_TRIES:
            tries += 1
            t, l_ = self._positions(failing.numel(), h, w, g)
            top[failing], left[failing] = t, l_
            sub, sub_keep = self._context(t, l_, h, w)
            # index_copy_, not ctx[failing] = sub: torch's index_put on a bool tensor took ~6 ms a call here
            ctx.index_copy_(0, failing, sub)
            keep.index_copy_(0, failing, sub_keep)
            failing = failing[(sub_keep < cfg.min_keep).any(1)]
        if failing.numel():
            raise ValueError(
                f"could not place {npred} target blocks of sizes {list(zip(th.tolist(), tw.tolist()))} "
                f"and context blocks of sizes {list(zip(ch.tolist(), cw.tolist()))} on a "
                f"{self.height}x{self.width} grid leaving min_keep={cfg.min_keep} context patches for "
                f"{failing.numel()} image(s) after {_MAX_TRIES} re-draws; lower min_keep, num_pred_masks or "
                "pred_mask_scale, or set allow_overlap=True"
            )

        masks_pred = []
        for k in range(npred):
            # Row-major offsets inside the block: ids come out sorted without a sort.
            dr = torch.arange(int(th[k]))[None, :, None]
            dc = torch.arange(int(tw[k]))[None, None, :]
            ids = (top[:, k, None, None] + dr) * self.width + left[:, k, None, None] + dc
            masks_pred.append(ids.reshape(batch_size, -1))

        masks_enc = []
        # On slices of the batch small enough for torch to keep each op on one thread (the stalls ``_context``
        # avoids); the keys below are drawn slice by slice, so the slices are part of what a seed draws.
        step = max(1, _SERIAL_NUMEL // self.num_patches)
        # One length for every context mask of the batch, as the reference: the encoder stacks the context
        # masks along the batch, so they must agree across masks as well as across images.
        length = int(keep.min())
        for e in range(nenc):
            exact = bool((keep[:, e] == length).all())
            parts = []
            for start in range(0, batch_size, step):
                m = ctx[start : start + step, e]
                if exact:
                    # nonzero walks row-major, so each image's ids come out ascending.
                    parts.append(m.nonzero()[:, 1].reshape(-1, length))
                    continue
                # Equal lengths by a uniformly random subset of each context (never by dropping the highest
                # ids): the `length` smallest of i.i.d. uniform keys, non-context patches keyed out of reach.
                keys = torch.rand(m.shape, generator=g).masked_fill_(~m, 2.0)
                ids = keys.topk(length, dim=1, largest=False, sorted=False).indices
                parts.append(ids.sort(dim=1).values)
            masks_enc.append(torch.cat(parts))
        return masks_enc, masks_pred

    # ------------------------------------------------------------------ reference mode

    def _reference_place(
        self, h: int, w: int, regions: torch.Tensor | None, g: torch.Generator
    ) -> tuple[torch.Tensor, int, int]:
        """One block by the reference's rejection loop. ``regions`` (R, H, W) bool: acceptable regions.

        Returns the boolean (H, W) mask and the corner. Same draws as the reference: top then left, with
        exclusive upper bounds H−h and W−w, repeated until the constrained block has more than min_keep
        patches; every ``_REF_TIMEOUT`` failures the last acceptable region is dropped.
        """
        tries, timeout = 0, _REF_TIMEOUT
        while True:
            top = int(torch.randint(0, self.height - h, (1,), generator=g))
            left = int(torch.randint(0, self.width - w, (1,), generator=g))
            mask = torch.zeros(self.height, self.width, dtype=torch.bool)
            mask[top : top + h, left : left + w] = True
            if regions is not None:
                n = max(regions.shape[0] - tries, 0)
                if n:
                    mask &= regions[:n].all(0)
            if int(mask.sum()) > self.cfg.min_keep:
                return mask, top, left
            timeout -= 1
            if timeout == 0:
                tries += 1
                timeout = _REF_TIMEOUT

    def _sample_reference(
        self, batch_size: int, g: torch.Generator
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cfg = self.cfg
        p_h, p_w = reference_block_size(
            self.height, self.width, torch.rand(1, generator=g).item(), cfg.pred_mask_scale, cfg.aspect_ratio
        )
        e_h, e_w = reference_block_size(
            self.height, self.width, torch.rand(1, generator=g).item(), cfg.enc_mask_scale, (1.0, 1.0)
        )
        # Construction checked a grid of draws; this catches a draw between grid points before it can hang.
        for name, h, w in (("target", p_h, p_w), ("context", e_h, e_w)):
            if h * w <= cfg.min_keep:
                raise ValueError(reference_hang_message(name, h, w, self.height, self.width, cfg.min_keep))

        dr = torch.arange(p_h)[:, None] * self.width
        dc = torch.arange(p_w)[None, :]
        preds: list[list[torch.Tensor]] = []
        encs: list[list[torch.Tensor]] = []
        for _ in range(batch_size):
            masks_p, complements = [], []
            for _ in range(cfg.num_pred_masks):
                _, top, left = self._reference_place(p_h, p_w, None, g)
                masks_p.append((dr + (top * self.width + left) + dc).flatten())
                comp = torch.ones(self.height, self.width, dtype=torch.bool)
                comp[top : top + p_h, left : left + p_w] = False
                complements.append(comp)
            preds.append(masks_p)
            regions = None if cfg.allow_overlap else torch.stack(complements)
            encs.append(
                [
                    self._reference_place(e_h, e_w, regions, g)[0].flatten().nonzero().squeeze(1)
                    for _ in range(cfg.num_enc_masks)
                ]
            )
        # The reference cuts every mask to the shortest of the batch (one length for all target indices, one
        # for all context indices), keeping the lowest ids.
        keep_pred = min(len(m) for ms in preds for m in ms)
        keep_enc = min(len(m) for ms in encs for m in ms)
        masks_pred = [torch.stack([ms[k][:keep_pred] for ms in preds]) for k in range(cfg.num_pred_masks)]
        masks_enc = [torch.stack([ms[k][:keep_enc] for ms in encs]) for k in range(cfg.num_enc_masks)]
        return masks_enc, masks_pred


def _lerp(bounds: tuple[float, float], u: torch.Tensor) -> torch.Tensor:
    """Map uniform draws in [0, 1) onto [low, high]."""
    return bounds[0] + u * (bounds[1] - bounds[0])
