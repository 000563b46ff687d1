"""ijepa.masks' reference mode: an executable spec of the reference sampler, and the reference's defects, pinned."""

from __future__ import annotations

import math
import time

import pytest
import torch
from conftest import gen, rows_cols, small_grid_cfg

from ijepa.masks import MaskConfig, MultiBlockMaskSampler

# ---------------------------------------------------------------- executable spec of the reference sampler


class ReferenceTranscription:
    """facebookresearch/ijepa ``src/masks/multiblock.py`` MaskCollator logic, same draws in the same order.

    Like the reference, block sizes come from ``g`` and block positions from the *global* RNG
    (``torch.randint`` without a generator); tests pass ``g = torch.default_generator`` so that both are the
    one stream the sampler under test draws everything from.
    """

    def __init__(self, height: int, width: int, cfg: MaskConfig):
        self.height, self.width = height, width
        self.enc_mask_scale, self.pred_mask_scale = cfg.enc_mask_scale, cfg.pred_mask_scale
        self.aspect_ratio, self.min_keep, self.allow_overlap = (
            cfg.aspect_ratio,
            cfg.min_keep,
            cfg.allow_overlap,
        )
        self.nenc, self.npred = cfg.num_enc_masks, cfg.num_pred_masks
        self.relaxations = 0  # times the acceptable regions were relaxed (to know that path ran)

    def sample_block_size(self, generator, scale, aspect_ratio_scale):
        rand = torch.rand(1, generator=generator).item()  # one draw, shared by scale and aspect
        mask_scale = scale[0] + rand * (scale[1] - scale[0])
        max_keep = int(self.height * self.width * mask_scale)
        aspect = aspect_ratio_scale[0] + rand * (aspect_ratio_scale[1] - aspect_ratio_scale[0])
        h = int(round(math.sqrt(max_keep * aspect)))
        w = int(round(math.sqrt(max_keep / aspect)))
        while h >= self.height:
            h -= 1
        while w >= self.width:
            w -= 1
        return h, w

    def sample_block_mask(self, size, acceptable_regions=None):
        h, w = size
        tries, timeout = 0, 20
        while True:
            top = torch.randint(0, self.height - h, (1,))
            left = torch.randint(0, self.width - w, (1,))
            mask = torch.zeros((self.height, self.width), dtype=torch.int32)
            mask[top : top + h, left : left + w] = 1
            if acceptable_regions is not None:
                for k in range(max(len(acceptable_regions) - tries, 0)):
                    mask *= acceptable_regions[k]
            mask = torch.nonzero(mask.flatten())
            if len(mask) > self.min_keep:
                break
            timeout -= 1
            if timeout == 0:
                tries += 1
                self.relaxations += 1
                timeout = 20
        complement = torch.ones((self.height, self.width), dtype=torch.int32)
        complement[top : top + h, left : left + w] = 0
        return mask.squeeze(), complement

    def __call__(self, batch_size, g):
        p_size = self.sample_block_size(g, self.pred_mask_scale, self.aspect_ratio)
        e_size = self.sample_block_size(g, self.enc_mask_scale, (1.0, 1.0))
        all_pred, all_enc = [], []
        min_keep_pred = min_keep_enc = self.height * self.width
        for _ in range(batch_size):
            masks_p, masks_c = [], []
            for _ in range(self.npred):
                mask, mask_c = self.sample_block_mask(p_size)
                masks_p.append(mask)
                masks_c.append(mask_c)
                min_keep_pred = min(min_keep_pred, len(mask))
            all_pred.append(masks_p)
            regions = None if self.allow_overlap else masks_c
            masks_e = []
            for _ in range(self.nenc):
                mask, _ = self.sample_block_mask(e_size, acceptable_regions=regions)
                masks_e.append(mask)
                min_keep_enc = min(min_keep_enc, len(mask))
            all_enc.append(masks_e)
        # default_collate of [B][n] tensors == one (B, K) stack per mask index
        masks_pred = [torch.stack([m[k][:min_keep_pred] for m in all_pred]) for k in range(self.npred)]
        masks_enc = [torch.stack([m[k][:min_keep_enc] for m in all_enc]) for k in range(self.nenc)]
        return masks_enc, masks_pred


def transcription_for(grid: tuple[int, int], cfg: MaskConfig) -> ReferenceTranscription:
    return ReferenceTranscription(grid[0], grid[1], cfg)


REFERENCE_CASES = {
    "16x16-recipe": ((16, 16), MaskConfig(mode="reference")),
    "16x16-overlap": ((16, 16), MaskConfig(mode="reference", allow_overlap=True)),
    "8x8": ((8, 8), small_grid_cfg(mode="reference")),
    "16x20-2enc-3pred": ((16, 20), MaskConfig(mode="reference", num_enc_masks=2, num_pred_masks=3)),
    # the reference class's own defaults
    "14x14-class-defaults": (
        (14, 14),
        MaskConfig(
            mode="reference",
            enc_mask_scale=(0.2, 0.8),
            pred_mask_scale=(0.2, 0.8),
            aspect_ratio=(0.3, 3.0),
            num_pred_masks=2,
            min_keep=4,
        ),
    ),
    # small context, many targets: forces the acceptable-region relaxation path
    "8x8-relaxation": (
        (8, 8),
        MaskConfig(
            mode="reference",
            enc_mask_scale=(0.3, 0.4),
            pred_mask_scale=(0.2, 0.3),
            num_pred_masks=6,
            min_keep=4,
        ),
    ),
}


@pytest.mark.parametrize("grid,cfg", list(REFERENCE_CASES.values()), ids=list(REFERENCE_CASES))
def test_reference_mode_matches_transcription_exactly(grid, cfg):
    sampler = MultiBlockMaskSampler(grid, cfg)
    ref = transcription_for(grid, cfg)
    with torch.random.fork_rng():
        for seed in range(4):
            torch.manual_seed(seed)
            # two batches in a row: also pins how many numbers each batch consumes
            expected = [ref(12, torch.default_generator) for _ in range(2)]
            torch.manual_seed(seed)
            got = [sampler(12, torch.default_generator) for _ in range(2)]
            # a private generator in the same state draws the same stream
            assert all(torch.equal(a, b) for a, b in zip(sampler(12, gen(seed))[0], got[0][0]))
            for (e_exp, p_exp), (e_got, p_got) in zip(expected, got):
                assert len(e_got) == len(e_exp) and len(p_got) == len(p_exp)
                for a, b in zip(e_got + p_got, e_exp + p_exp):
                    assert a.dtype == b.dtype == torch.int64
                    assert torch.equal(a, b)
    if cfg.num_pred_masks == 6:
        assert ref.relaxations > 0, "case meant to exercise the acceptable-region relaxation"


# ---------------------------------------------------------------- reference defects, pinned


@pytest.mark.parametrize("grid,side", [((16, 16), 15), ((8, 8), 7)])
def test_reference_context_is_always_top_left_block(grid, side):
    cfg = MaskConfig(mode="reference", allow_overlap=True, min_keep=4)
    sampler = MultiBlockMaskSampler(grid, cfg)
    block = (torch.arange(side)[:, None] * grid[1] + torch.arange(side)[None, :]).flatten()
    for seed in range(5):
        (enc,), preds = sampler(8, gen(seed))
        assert torch.equal(enc, block.expand(8, -1))
        for p in preds:  # targets never use the last row/column either
            r, c = rows_cols(p, grid[1])
            assert r.max() < grid[0] - 1 and c.max() < grid[1] - 1


def test_reference_scale_and_aspect_share_one_draw():
    sampler = MultiBlockMaskSampler(16, MaskConfig(mode="reference"))
    shapes = set()
    for seed in range(200):
        _, preds = sampler(1, gen(seed))
        r, c = rows_cols(preds[0][0], 16)
        shape = (int(r.max() - r.min()) + 1, int(c.max() - c.min()) + 1)
        # the shape is fixed by the generator's first number alone
        rand = torch.rand(1, generator=gen(seed)).item()
        mk = int(256 * (0.15 + rand * 0.05))
        a = 0.75 + rand * 0.75
        assert shape == (round(math.sqrt(mk * a)), round(math.sqrt(mk / a)))
        shapes.add(shape)
    # small blocks are always wide, large ones always tall: only six shapes ever occur
    assert shapes == {(5, 7), (6, 6), (6, 7), (7, 6), (8, 6), (9, 6)}


def test_reference_truncation_keeps_only_smallest_ids():
    sampler = MultiBlockMaskSampler(16, MaskConfig(mode="reference"))
    (enc,), preds = sampler(32, gen(3))
    length = enc.shape[1]
    block = torch.zeros(32, 256, dtype=torch.bool)
    block.view(32, 16, 16)[:, :15, :15] = True  # the context block is always this (see above)
    for p in preds:
        block.scatter_(1, p, False)
    full = [row.nonzero().squeeze(1) for row in block]
    for ids, f in zip(enc, full):
        assert torch.equal(ids, f[:length])
    dropped = 1 - length * 32 / sum(len(f) for f in full)
    assert dropped > 0.15, dropped  # ~a third of the context patches, all from the bottom


def test_reference_hang_configs_raise_instead():
    start = time.perf_counter()
    # ijepa #68: 32 px / patch 4 with the recipe's min_keep=10 -> a 3x3 target can never be accepted
    with pytest.raises(ValueError, match="loop forever"):
        MultiBlockMaskSampler(8, MaskConfig(mode="reference"))
    with pytest.raises(ValueError, match="min_keep"):
        MultiBlockMaskSampler(8, MaskConfig(mode="reference", min_keep=65))
    with pytest.raises(ValueError, match="context block of 2x2"):
        MultiBlockMaskSampler(
            4,
            MaskConfig(mode="reference", enc_mask_scale=(0.3, 0.4), pred_mask_scale=(0.7, 0.75), min_keep=8),
        )
    assert time.perf_counter() - start < 1.0
