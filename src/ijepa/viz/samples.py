"""``viz predict --samples K``: samples of what the predictor predicts, drawn by the stochastic decoder, and the
figures that say whether they are faithful, stochastic where they should be, and about the right thing.

A row: the original, the context (the box greyed: all the model sees), K samples drawn from the token grid whose
box holds the predictor's output, the deterministic decoder's rendering of the same grid, and one sample drawn
from the true tokens (the best this lens shows). Samples are drawn whole, context included, from tokens alone.

:func:`measure_samples` prints four groups of figures over held-out images (see docs/visualisation.md):

- faithful: on the true tokens the mean of K samples against the deterministic decoder (box PSNR), and one
  sample against the mean image;
- stochastic: the per-pixel std across samples inside the box against outside it, for the predictor's output
  and for the true tokens;
- semantic: a small classifier trained on real images labels the completions (context + one sample in the box)
  against context + the mean image in the box, and the swap test (image j's prediction in image i's box);
- diversity: the mean pairwise L2 distance between samples inside the box, for both conditions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..optim import param_groups, set_lr, warmup_cosine
from ..precision import resolve_precision
from . import VizError
from .decoder import PixelDecoder, check_decoder_fits
from .features import panel_label, to_display
from .predict import Box, WorldModel, box_ids, box_pixels, grey_box, predict_box
from .stochastic import GridDenoiser, _features, box_masks, draw_samples, sample


def with_box_tokens(true_tokens: torch.Tensor, boxes: Sequence[Box], predictions: Sequence[torch.Tensor],
                    grid: tuple[int, int]) -> torch.Tensor:
    """Token grids (B, N, D) whose box tokens are replaced by ``predictions`` (K_i, D)."""
    tokens = true_tokens.clone()
    for i, (box, pred) in enumerate(zip(boxes, predictions)):
        tokens[i, box_ids(box, grid)] = pred.to(tokens.dtype)
    return tokens


@dataclass
class SampleRows:
    """What :func:`draw_sample_rows` shows: (B, C, H, W) in [0, 1], ``samples`` (B, K, C, H, W)."""

    original: torch.Tensor
    context: torch.Tensor
    samples: torch.Tensor
    decoded: torch.Tensor | None
    truth_sample: torch.Tensor
    boxes: list[Box]
    patch_size: int


def _conditions(wm: WorldModel, images: torch.Tensor, boxes: Sequence[Box], device, precision: str,
                shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(true token grids, token grids with the box predicted from the context of image ``i - shift``)."""
    true_tokens = _features(wm.target_encoder, images, torch.device(device), resolve_precision(precision, device))
    wm.target_encoder.cpu()
    source = images.roll(shift, 0) if shift else images
    return true_tokens, with_box_tokens(true_tokens, boxes, predict_box(wm, source, boxes), wm.grid_size)


@torch.no_grad()
def render_samples(wm: WorldModel, images: torch.Tensor, boxes: Sequence[Box], sampler: GridDenoiser, k: int = 4,
                   *, decoder: PixelDecoder | None = None, seed: int = 0, steps: int = 24, device: str = "cpu",
                   precision: str = "auto") -> SampleRows:
    """Predict each image's box, draw ``k`` samples from the predicted token grid (seeds ``seed`` ..
    ``seed + k - 1``), one from the true grid, and the deterministic decoder's rendering (with ``decoder``)."""
    boxes = [tuple(b) for b in boxes]
    true_tokens, cond = _conditions(wm, images, boxes, device, precision)
    kw = {"steps": steps, "device": device, "precision": precision}
    samples = draw_samples(sampler, cond, k, seed=seed, **kw)
    truth = sample(sampler, true_tokens, seed=seed, **kw)
    decoded = None
    if decoder is not None:
        check_decoder_fits(decoder, wm.target_encoder)
        decoded = decoder(cond).clamp(0, 1)
    context = torch.stack([grey_box(img, b, wm.patch_size) for img, b in zip(images, boxes)])
    return SampleRows(images.float(), context, samples, decoded, truth, boxes, wm.patch_size)


def _box_psnr(pred: torch.Tensor, truth: torch.Tensor, box: Box, p: int) -> float:
    mse = F.mse_loss(box_pixels(pred, box, p).float(), box_pixels(truth, box, p).float()).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def draw_sample_rows(r: SampleRows, *, names: Sequence[str] | None = None, title: str = ""):
    """One row per image: original, context only, the K samples, the deterministic decoder, a sample on the
    true tokens; the box outlined in red, box PSNR under every rendering."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    k = r.samples.shape[1]
    cols = [("original", r.original), ("context only", r.context)]
    cols += [(f"sample {j + 1}", r.samples[:, j]) for j in range(k)]
    if r.decoded is not None:
        cols.append(("decoder (mean)", r.decoded))
    cols.append(("sample, true tokens", r.truth_sample))
    b, p = len(r.original), r.patch_size
    fig = Figure(figsize=(1.45 * len(cols) + 0.4, 1.6 * b + 0.7), layout="constrained")
    axes = fig.subplots(b, len(cols), squeeze=False)
    shown = [to_display(x) for _, x in cols]
    for i in range(b):
        r0, c0, h, w = r.boxes[i]
        for j, (label, data) in enumerate(cols):
            ax = axes[i, j]
            img = shown[j][i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.add_patch(Rectangle((c0 * p - 0.5, r0 * p - 0.5), w * p, h * p, fill=False, ec="#ff3b30", lw=1.0))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=8)
            if j >= 2:
                ax.set_xlabel(f"{_box_psnr(data[i], r.original[i], r.boxes[i], p):.1f} dB", fontsize=7)
        if names is not None:
            axes[i, 0].set_ylabel(panel_label(names[i]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------ classifier


class PixelClassifier(nn.Module):
    """A small CNN on [0, 1] images: the judge of the semantic test (independent of the I-JEPA features)."""

    def __init__(self, in_chans: int, num_classes: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, steps: int = 600, batch_size: int = 128,
                     lr: float = 3e-3, seed: int = 0) -> PixelClassifier:
    """Fit a :class:`PixelClassifier` on real images (N, C, H, W) in [0, 1] with integer ``labels``."""
    torch.manual_seed(seed)
    clf = PixelClassifier(images.shape[1], int(labels.max()) + 1)
    opt = torch.optim.AdamW(param_groups(clf, 1e-4), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        set_lr(opt, warmup_cosine(step, steps, 0, lr))
        idx = torch.randint(len(images), (batch_size,), generator=g)
        loss = F.cross_entropy(clf(images[idx].float()), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()


@torch.no_grad()
def _probs(clf: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([clf(images[i:i + 512].float()).softmax(-1) for i in range(0, len(images), 512)])


# ------------------------------------------------------------------------------------------------- measures


def paste_box(base: torch.Tensor, fill: torch.Tensor, boxes: Sequence[Box], p: int) -> torch.Tensor:
    """``base`` (B, C, H, W) with each image's box taken from ``fill`` (B, C, H, W, or one (C, H, W) image)."""
    out = base.clone()
    for i, (r0, c0, h, w) in enumerate(boxes):
        src = fill[i] if fill.dim() == 4 else fill
        out[i, :, r0 * p:(r0 + h) * p, c0 * p:(c0 + w) * p] = src[:, r0 * p:(r0 + h) * p, c0 * p:(c0 + w) * p]
    return out


def _pixel_mask(boxes: Sequence[Box], grid: tuple[int, int], p: int) -> torch.Tensor:
    m = box_masks(boxes, grid).view(len(boxes), 1, grid[0], grid[1]).float()
    return m.repeat_interleave(p, 2).repeat_interleave(p, 3)  # (B, 1, H, W)


def _box_psnr_set(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR over all box pixels of a set (B, C, H, W), mask (B, 1, H, W)."""
    se = ((pred.float() - truth.float()) ** 2 * mask).sum()
    mse = (se / (mask.sum() * pred.shape[1])).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _spread(samples: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Per-pixel std across samples (B, K, C, H, W) inside / outside the box, and the mean pairwise L2 distance
    between samples' box pixels."""
    std = samples.float().std(1).mean(1, keepdim=True)  # (B, 1, H, W)
    inside = (std * mask).sum() / mask.sum()
    outside = (std * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
    k = samples.shape[1]
    dists = [((samples[:, a] - samples[:, b]) * mask).flatten(1).norm(dim=1)
             for a, b in itertools.combinations(range(k), 2)]
    return {"std_in_box": inside.item(), "std_outside": outside.item(),
            "pairwise_l2_in_box": torch.stack(dists).mean().item() if dists else 0.0}


@torch.no_grad()
def measure_samples(wm: WorldModel, images: torch.Tensor, boxes: Sequence[Box], sampler: GridDenoiser, *,
                    k: int = 4, labels: torch.Tensor | None = None, classifier: nn.Module | None = None,
                    decoder: PixelDecoder | None = None, seed: int = 0, steps: int = 24, device: str = "cpu",
                    precision: str = "auto", shift: int = 1) -> dict[str, dict[str, float]]:
    """The four groups of figures over ``images`` (held out) and their ``boxes``; ``semantic`` needs
    ``labels`` and a ``classifier``, the deterministic decoder's figures need ``decoder``. Image ``i``'s swap
    partner is image ``i - shift``."""
    if len(images) < 2 or k < 2:
        raise VizError("measuring samples needs at least two images and two samples per image")
    boxes = [tuple(b) for b in boxes]
    p, grid = wm.patch_size, wm.grid_size
    true_tokens, cond = _conditions(wm, images, boxes, device, precision)
    swap = with_box_tokens(true_tokens, boxes, predict_box(wm, images.roll(shift, 0), boxes), grid)
    kw = {"steps": steps, "device": device, "precision": precision}
    s_true = draw_samples(sampler, true_tokens, k, seed=seed, **kw)
    s_pred = draw_samples(sampler, cond, k, seed=seed, **kw)
    mask = _pixel_mask(boxes, grid, p)
    x = images.float()
    mean_img = x.mean(0, keepdim=True).expand_as(x)
    faithful = {"true_mean_of_k_psnr": _box_psnr_set(s_true.mean(1), x, mask),
                "true_one_sample_psnr": _box_psnr_set(s_true[:, 0], x, mask),
                "mean_image_psnr": _box_psnr_set(mean_img, x, mask),
                "pred_mean_of_k_psnr": _box_psnr_set(s_pred.mean(1), x, mask),
                "pred_one_sample_psnr": _box_psnr_set(s_pred[:, 0], x, mask)}
    if decoder is not None:
        check_decoder_fits(decoder, wm.target_encoder)
        faithful["decoder_true_psnr"] = _box_psnr_set(decoder(true_tokens).clamp(0, 1), x, mask)
        faithful["decoder_pred_psnr"] = _box_psnr_set(decoder(cond).clamp(0, 1), x, mask)
    sp, st = _spread(s_pred, mask), _spread(s_true, mask)
    out = {"faithful": faithful,
           "stochastic": {"pred_std_in_box": sp["std_in_box"], "pred_std_outside": sp["std_outside"],
                          "pred_in_out_ratio": sp["std_in_box"] / max(sp["std_outside"], 1e-12),
                          "true_std_in_box": st["std_in_box"], "true_std_outside": st["std_outside"]},
           "diversity": {"pred_pairwise_l2_in_box": sp["pairwise_l2_in_box"],
                         "true_pairwise_l2_in_box": st["pairwise_l2_in_box"]}}
    if labels is not None and classifier is not None:
        s_swap = sample(sampler, swap, seed=seed, **kw)
        out["semantic"] = _semantic(classifier, x, labels, boxes, p, s_pred[:, 0], s_swap, mean_img[0], shift)
    return out


def _semantic(clf: nn.Module, x: torch.Tensor, labels: torch.Tensor, boxes: Sequence[Box], p: int,
              own: torch.Tensor, swapped: torch.Tensor, mean_img: torch.Tensor, shift: int) -> dict[str, float]:
    y, y_other = labels, labels.roll(shift, 0)
    probs = {name: _probs(clf, img) for name, img in (
        ("original", x), ("completion", paste_box(x, own, boxes, p)),
        ("mean_fill", paste_box(x, mean_img, boxes, p)), ("swap", paste_box(x, swapped, boxes, p)))}
    acc = {f"acc_{name}": (pr.argmax(1) == y).float().mean().item() for name, pr in probs.items()}
    differ = y != y_other
    rows, partner = torch.arange(len(y))[differ], y_other[differ]
    toward: dict[str, float] = {"pairs_of_different_class": int(differ.sum())}
    for name in ("completion", "swap"):  # the partner's class: its probability, and how often it is the label
        toward[f"partner_prob_{name}"] = probs[name][rows, partner].mean().item()
        toward[f"labelled_partner_{name}"] = (probs[name][rows].argmax(1) == partner).float().mean().item()
    return {**acc, **toward}
