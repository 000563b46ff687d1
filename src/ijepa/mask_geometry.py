"""Whether a mask configuration can work on a patch grid at all, decided before anything is built.

Pure NumPy on tiny arrays, no torch: the config validates with it (an impossible geometry is a config error at
load time, naming the keys) and the sampler (``ijepa.masks``) calls the same function when it is constructed, so
the two can never disagree. Sizes follow the sampler's formulas exactly (``MultiBlockMaskSampler._block_hw`` for
the default mode, the reference's own for ``mode="reference"``). ``placement_problem`` (blocks that fit but seldom
leave enough context, so that the sampler would give up at some step) needs the batch size: the config runs it.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import numpy as np

__all__ = ["GeometryProblem", "MaskGeometry", "geometry_problem", "placement_problem", "reference_block_size",
           "reference_hang_message"]

# Resolution of the draw grids: sizes are drawn from continuous ranges, so the check walks a fine grid of draws.
GRID_POINTS = 257
# How often the default sampler re-draws a failing image's positions before it gives up (masks._MAX_TRIES).
REDRAWS = 100
# placement_problem's bound on the share of batches that would exhaust the re-draws.
FAILING_BATCHES = 1e-3


class MaskGeometry(Protocol):
    """The fields the check reads (those of ``ijepa.config_sections.MaskConfig``, the mask section and the
    sampler's config)."""

    mode: str
    num_enc_masks: int
    num_pred_masks: int
    enc_mask_scale: tuple[float, float]
    pred_mask_scale: tuple[float, float]
    aspect_ratio: tuple[float, float]
    min_keep: int
    allow_overlap: bool


class GeometryProblem(NamedTuple):
    """Why a geometry can never give valid masks, and the mask keys that decide it (bare names, no section)."""

    message: str
    keys: tuple[str, ...]


def geometry_problem(height: int, width: int, cfg: MaskGeometry) -> GeometryProblem | None:
    """``None`` when ``cfg`` can give valid masks on a ``height`` x ``width`` grid; else what goes wrong.

    Default mode: some draw of block sizes leaves no valid placement at all (sizes are drawn once per batch, so
    such a draw would fail whatever the re-draws of positions, at a random step of a long run). Bad luck in
    placement is left to the sampler's bounded retries. Reference mode: some draw would make the reference's
    rejection loop spin forever (facebookresearch/ijepa #68).
    """
    n = height * width
    if cfg.min_keep > n:
        return GeometryProblem(f"min_keep={cfg.min_keep} exceeds the {height}x{width} grid's {n} patches",
                               ("min_keep",))
    if cfg.mode == "reference":
        return _reference_problem(height, width, cfg)
    return _default_problem(height, width, cfg)


def _lerp(bounds: tuple[float, float], u: np.ndarray) -> np.ndarray:
    return bounds[0] + u * (bounds[1] - bounds[0])


def default_block_sizes(height: int, width: int, scale: np.ndarray, aspect: np.ndarray) -> np.ndarray:
    """Distinct default-mode block sizes ``(K, 2)`` (rows ``h, w``) over arrays of scale and aspect draws:
    h·w ≈ s·N, h/w ≈ a, clamped to the grid (the formula of the sampler's ``_block_hw``)."""
    area = scale * height * width
    h = np.clip(np.round(np.sqrt(area * aspect)), 1, height).astype(np.int64)
    w = np.clip(np.round(np.sqrt(area / aspect)), 1, width).astype(np.int64)
    key = np.unique(h * (width + 1) + w)
    return np.stack([key // (width + 1), key % (width + 1)], 1)


def _default_problem(height: int, width: int, cfg: MaskGeometry) -> GeometryProblem | None:
    u = np.linspace(0.0, 1.0, GRID_POINTS)
    ctx = default_block_sizes(height, width, _lerp(cfg.enc_mask_scale, u), np.ones_like(u))
    ctx_area = ctx[:, 0] * ctx[:, 1]
    if int(ctx_area.min()) < cfg.min_keep:
        return GeometryProblem(
            f"enc_mask_scale={tuple(cfg.enc_mask_scale)} gives context blocks as small as {int(ctx_area.min())} "
            f"patches on a {height}x{width} grid, fewer than min_keep={cfg.min_keep}",
            ("enc_mask_scale", "min_keep"))
    if cfg.allow_overlap:
        return None
    s, a = np.meshgrid(_lerp(cfg.pred_mask_scale, u), _lerp(cfg.aspect_ratio, u), indexing="ij")
    tgt = default_block_sizes(height, width, s.ravel(), a.ravel())
    # A target and the context must overlap by at least this much, wherever they land; the context keeps at
    # most its area minus that (all targets piled on the least harmful spot).
    over_h = np.maximum(tgt[None, :, 0] + ctx[:, None, 0] - height, 0)
    over_w = np.maximum(tgt[None, :, 1] + ctx[:, None, 1] - width, 0)
    best_keep = ctx_area[:, None] - over_h * over_w  # (contexts, targets)
    i, j = np.unravel_index(np.argmin(best_keep), best_keep.shape)
    if int(best_keep[i, j]) >= cfg.min_keep:
        return None
    return GeometryProblem(
        f"a {tgt[j, 0]}x{tgt[j, 1]} target block (pred_mask_scale={tuple(cfg.pred_mask_scale)}, "
        f"aspect_ratio={tuple(cfg.aspect_ratio)}) leaves a {ctx[i, 0]}x{ctx[i, 1]} context block "
        f"(enc_mask_scale={tuple(cfg.enc_mask_scale)}) at most {int(best_keep[i, j])} patches of the "
        f"{height}x{width} grid, fewer than min_keep={cfg.min_keep}; lower min_keep or the target scale, or set "
        "allow_overlap=True",
        ("pred_mask_scale", "enc_mask_scale", "min_keep"))


def placement_problem(height: int, width: int, cfg: MaskGeometry, batch_size: int) -> GeometryProblem | None:
    """``None`` when default-mode blocks (targets cut out of the contexts) leave ``min_keep`` context patches often
    enough that a batch of ``batch_size`` practically never exhausts the sampler's ``REDRAWS`` re-draws of an
    image; else why not. Blocks that fit (``geometry_problem``) but seldom leave enough, e.g. many target
    blocks, would make the sampler give up at a random step of the run.

    Estimated on seeded placements of the largest target blocks and the smallest contexts the scales give (the
    draws that keep least): a batch fails when one of its images fails every re-draw, and more than
    ``FAILING_BATCHES`` of the batches failing is a problem."""
    if cfg.mode == "reference" or cfg.allow_overlap:  # the reference's loop relaxes itself; overlap cuts nothing
        return None
    most = max(cfg.num_pred_masks, cfg.num_enc_masks) * height * width
    n, rng = max(64, min(1024, 2**25 // most)), np.random.default_rng(0)  # placements, at most 32 MB of masks
    rows, cols = np.arange(height), np.arange(width)

    def blocks(scale: float, aspect: float, count: int) -> tuple[np.ndarray, tuple[int, int]]:
        (h, w), = default_block_sizes(height, width, np.array([scale]), np.array([aspect]))
        top = rng.integers(0, height - h + 1, (n, count, 1))
        left = rng.integers(0, width - w + 1, (n, count, 1))
        inside = ((rows >= top) & (rows < top + h))[..., :, None] & ((cols >= left) & (cols < left + w))[..., None, :]
        return inside, (int(h), int(w))

    targets, (th, tw) = blocks(cfg.pred_mask_scale[1], float(np.clip(1.0, *cfg.aspect_ratio)), cfg.num_pred_masks)
    contexts, (ch, cw) = blocks(cfg.enc_mask_scale[0], 1.0, cfg.num_enc_masks)
    kept = (contexts & ~targets.any(1, keepdims=True)).sum((2, 3))
    works = float((kept >= cfg.min_keep).all(1).mean())
    if (1.0 - works) ** REDRAWS * batch_size <= FAILING_BATCHES:
        return None
    return GeometryProblem(
        f"{cfg.num_pred_masks} target blocks of {th}x{tw} (pred_mask_scale={tuple(cfg.pred_mask_scale)}) leave "
        f"min_keep={cfg.min_keep} patches of {cfg.num_enc_masks} context block(s) of {ch}x{cw} "
        f"(enc_mask_scale={tuple(cfg.enc_mask_scale)}) in only {works:.1%} of {n} random placements on the "
        f"{height}x{width} grid; the sampler gives up on an image after {REDRAWS} re-draws, so a batch of "
        f"{batch_size} would fail at some step: lower num_pred_masks, num_enc_masks, the target scale or min_keep, "
        "or set allow_overlap=True", ("num_pred_masks", "num_enc_masks", "pred_mask_scale", "min_keep"))


def reference_block_size(height: int, width: int, rand: float, scale: tuple[float, float],
                         aspect: tuple[float, float]) -> tuple[int, int]:
    """The reference's block size for its one uniform draw ``rand`` (shared by scale and aspect)."""
    mask_scale = scale[0] + rand * (scale[1] - scale[0])
    max_keep = int(height * width * mask_scale)
    aspect_ratio = aspect[0] + rand * (aspect[1] - aspect[0])
    h = int(round(math.sqrt(max_keep * aspect_ratio)))
    w = int(round(math.sqrt(max_keep / aspect_ratio)))
    # The reference decrements one at a time; min() is the same and cannot spin.
    return min(h, height - 1), min(w, width - 1)


def reference_hang_message(name: str, h: int, w: int, height: int, width: int, min_keep: int) -> str:
    return (
        f"mode='reference': a {name} block of {h}x{w}={max(h, 0) * max(w, 0)} patches on a {height}x{width} grid "
        f"is not larger than min_keep={min_keep}; the reference sampler would loop forever "
        "(facebookresearch/ijepa #68). Lower min_keep, raise the mask scales, or use mode='default'"
    )


def _reference_problem(height: int, width: int, cfg: MaskGeometry) -> GeometryProblem | None:
    """The reference accepts a block only with more than ``min_keep`` patches. Target blocks are never
    constrained, and context blocks are eventually unconstrained, so a draw hangs exactly when a block's
    h·w <= min_keep; checked over a fine grid of the single shared draw (the sampler re-checks each draw)."""
    for name, scale, aspect, keys in (
        ("target", cfg.pred_mask_scale, cfg.aspect_ratio, ("pred_mask_scale", "aspect_ratio", "min_keep")),
        ("context", cfg.enc_mask_scale, (1.0, 1.0), ("enc_mask_scale", "min_keep")),
    ):
        steps = GRID_POINTS * 16
        for i in range(steps):
            h, w = reference_block_size(height, width, i / steps, scale, aspect)
            if h * w <= cfg.min_keep:
                return GeometryProblem(reference_hang_message(name, h, w, height, width, cfg.min_keep), keys)
    return None
