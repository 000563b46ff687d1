"""``ijepa viz features``: PCA of an encoder's patch tokens as colour maps, the way DINO-style figures show them.

Procedure (over all patch tokens of the shown batch, or of a larger ``fit`` batch):

0. with ``center="position"`` (the default of the command), subtract each grid position's mean token over the
   fit batch first. Small I-JEPA models trained briefly carry mostly *where* a patch is: on the Fashion-MNIST
   CPU model the per-position mean token has ~94% of a token's norm, and the plain recipe (``center="global"``)
   then shows the same positional gradient for every image. Removing it leaves what differs between images —
   at a price: whatever is present at a position in (nearly) every image goes with the mean (the middle of a
   centred garment, say);
1. PCA of the tokens; the first component (PC1) usually separates object from background. Its sign is
   arbitrary: plain PCA orients it to score the image border lower than the centre (objects sit mostly inside);
   position-centred PCA (where every position averages zero) to put the more varied side high (objects have
   parts, backgrounds are flat);
2. foreground = PC1 above a threshold (Otsu's, unless given);
3. a second PCA over the foreground tokens only, first three components min-max scaled (1st–99th percentile)
   to RGB; background black;
4. maps upsampled from the patch grid to the image size (nearest or bilinear).

Also here: the image loading and figure saving the model-based pictures (features, predict, decoder) share.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.preprocess import prepare_images, resolve_input_spec
from ..data.sources import mode_for, open_images
from ..data.transforms import make_eval_transform, normalize_batch
from ..models.vit import inference_forward
from ..precision import Precision
from . import VizError

# ----------------------------------------------------------------------------------------------- shared helpers


@dataclass
class ImageSet:
    """Images (N, C, H, W) in [0, 1] at the encoder's resolution, with their indices in the source dataset and
    class names when the dataset has them."""

    images: torch.Tensor
    indices: list[int]
    names: list[str] | None = None


def pick_dataset(spec: dict, dataset: str = "auto", root: str | None = None) -> str:
    """``auto``: Fashion-MNIST for a 1-channel encoder (the CPU recipe, at any size: its 28-px images are resized
    to the encoder's, as the probe does; ``root`` is then its folder), else a folder of images (``root``)."""
    if dataset != "auto":
        return dataset
    size = tuple(spec["image_size"]) if not isinstance(spec["image_size"], int) else (spec["image_size"],) * 2
    if int(spec["in_chans"]) == 1:
        return "fashion_mnist"
    if root is None:
        raise VizError(f"this encoder takes {size[0]}x{size[1]} px, {spec['in_chans']}-channel images: give a folder "
                       "of images (--images DIR)")
    return "folder"


def load_images(spec: dict, n: int, *, dataset: str = "auto", root: str | None = None, split: str = "test",
                seed: int | None = 0, exclude: Sequence[int] = ()) -> ImageSet:
    """``n`` images for an encoder with input spec ``spec``, in [0, 1] at its resolution (not normalised).

    Fashion-MNIST (``split`` train/test, ``root`` its folder) or any folder of images (``root``, searched
    recursively; resized on the short side and centre-cropped). ``seed`` None takes the first ``n``, otherwise a
    seeded random choice; ``exclude`` lists dataset indices never to take (a query image kept out of a gallery).
    """
    spec = resolve_input_spec(None, spec)
    dataset = pick_dataset(spec, dataset, root)
    if dataset == "fashion_mnist":
        data = open_images("fashion_mnist", root, split=split)
        idx = _choose(len(data), n, seed, exclude)
        return ImageSet(prepare_images(data.images[idx], spec, normalize=False), idx,
                        [data.classes[int(data.labels[i])] for i in idx])
    if dataset != "folder":
        raise VizError(f"dataset must be fashion_mnist, folder or auto, got {dataset!r}")
    c = spec["in_chans"]
    tf = make_eval_transform(spec["image_size"][0], (0.0,) * c, (1.0,) * c, in_chans=c)
    ds = open_images("folder", root, split=None, transform=tf, mode=mode_for(c))
    images, kept = [], []
    for i in _choose(len(ds), len(ds), seed, exclude):
        item = ds[i]
        if item is None:  # unreadable file: already warned about by the dataset
            continue
        images.append(item[0])
        kept.append(i)
        if len(images) == n:
            break
    if not images:
        raise VizError(f"no readable images under {root}")
    x = torch.stack(images)
    if tuple(x.shape[-2:]) != tuple(spec["image_size"]):
        x = prepare_images(x, spec, normalize=False)
    return ImageSet(x, kept, [Path(ds.samples[i][0]).name for i in kept])


def _choose(total: int, n: int, seed: int | None, exclude: Sequence[int]) -> list[int]:
    if seed is None:
        order = torch.arange(total)
    else:
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    if len(exclude):
        order = order[~torch.isin(order, torch.as_tensor(list(exclude), dtype=torch.long))]
    if len(order) < n and n != total:
        raise VizError(f"asked for {n} images, the dataset has {len(order)} to choose from")
    return order[:n].tolist()


def encoder_input(images: torch.Tensor, encoder: torch.nn.Module) -> torch.Tensor:
    """[0, 1] images -> the normalised input ``encoder.input_spec`` describes."""
    spec = resolve_input_spec(encoder)
    return normalize_batch(images.float(), spec["mean"], spec["std"])


@torch.no_grad()
def encode(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 256,
           precision: Precision | None = None) -> torch.Tensor:
    """Patch tokens (N, num_patches, D) of [0, 1] images, in batches, returned in fp32; computed in fp32 unless
    ``precision`` (a :func:`ijepa.precision.resolve_precision` choice) says otherwise."""
    was_training = encoder.training
    encoder.eval()
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        out = [inference_forward(encoder, encoder_input(images[i:i + batch_size], encoder)).float()
               for i in range(0, len(images), batch_size)]
    encoder.train(was_training)
    return torch.cat(out)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a figure to ``path`` (format from the suffix; folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def panel_label(name: object, width: int = 14, lines: int = 4) -> str:
    """An image's name as a panel's label: the whole name wrapped to ``width`` characters a line (what fits over
    a panel), so that names sharing a long prefix stay apart; past ``lines`` lines its middle gives way to "…",
    keeping the start and the end (where numbers and extensions differ)."""
    text = str(name)
    room = width * lines
    if len(text) > room:
        text = text[:room // 2 - 1] + "…" + text[-(room - room // 2):]
    return "\n".join(text[i:i + width] for i in range(0, len(text), width))


def to_display(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W) for grey or (N, H, W, 3) for colour, clipped, for ``imshow``."""
    x = images.detach().cpu().float().clamp(0, 1).numpy()
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------------------- PCA


@dataclass
class FeatureMaps:
    """Per-image maps on the patch grid: ``pc1`` (N, gh, gw) scores, ``foreground`` (N, gh, gw) bool,
    ``rgb`` (N, gh, gw, 3) in [0, 1] (black background), plus the threshold and explained-variance ratios."""

    pc1: np.ndarray
    foreground: np.ndarray
    rgb: np.ndarray
    threshold: float
    explained_pc1: float
    explained_rgb: tuple[float, float, float]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of a 1-D sample (Otsu, 1979)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def _pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, components (k, D), explained-variance ratios (k,)) of rows of x."""
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    return mean, vh[:k], var[:k] / var.sum().clamp_min(1e-12)


def _border(grid: tuple[int, int]) -> np.ndarray:
    b = np.zeros(grid, dtype=bool)
    b[0, :] = b[-1, :] = b[:, 0] = b[:, -1] = True
    return b.ravel()


def _foreground_is_low(fit: torch.Tensor, fit_pc1: np.ndarray, grid: tuple[int, int], center: str) -> bool:
    """Whether PC1's sign puts the foreground on the low side (the sign of a principal component is arbitrary).

    Plain PCA: objects sit mostly inside the frame, so the side that scores the border higher is background.
    Position-centred PCA: every position's mean is zero, so the border says nothing; there the foreground is the
    more varied side of the split (objects have parts, backgrounds are flat)."""
    if center == "global":
        border = np.tile(_border(grid), len(fit_pc1) // (grid[0] * grid[1]))
        return bool(border.any() and (~border).any() and fit_pc1[border].mean() > fit_pc1[~border].mean())
    high = torch.from_numpy(fit_pc1 > otsu_threshold(fit_pc1))
    if high.all() or not high.any():
        return False

    def spread(x: torch.Tensor) -> float:
        return float(((x - x.mean(0)) ** 2).sum(1).mean())

    return spread(fit[~high]) > spread(fit[high])


def pca_feature_maps(tokens: torch.Tensor, grid_size: Sequence[int], *, threshold: float | None = None,
                     fit_tokens: torch.Tensor | None = None, center: str = "global") -> FeatureMaps:
    """DINO-style PCA maps of patch tokens (N, gh·gw, D); see the module docstring.

    ``fit_tokens`` (M, gh·gw, D): fit both PCAs on these instead (e.g. a larger batch) and apply them to
    ``tokens``. ``threshold``: on PC1 scores (default: Otsu's over the fit tokens). ``center``: ``"global"``
    (the plain recipe) or ``"position"`` (remove each position's mean token over the fit tokens first).
    """
    gh, gw = int(grid_size[0]), int(grid_size[1])
    n, p, d = tokens.shape
    if p != gh * gw:
        raise ValueError(f"{p} tokens per image do not form a {gh}x{gw} grid")
    if center not in ("global", "position"):
        raise ValueError(f"center must be 'global' or 'position', got {center!r}")
    fit3 = (fit_tokens if fit_tokens is not None else tokens).float()
    x3 = tokens.float()
    if center == "position":
        pos_mean = fit3.mean(0, keepdim=True)
        fit3, x3 = fit3 - pos_mean, x3 - pos_mean
    fit = fit3.reshape(-1, d)
    x = x3.reshape(-1, d)
    mean, comp, ratio = _pca(fit, 1)
    fit_pc1 = ((fit - mean) @ comp[0]).numpy()
    if _foreground_is_low(fit, fit_pc1, (gh, gw), center):
        comp = -comp
        fit_pc1 = -fit_pc1
    pc1 = ((x - mean) @ comp[0]).numpy()
    t = otsu_threshold(fit_pc1) if threshold is None else float(threshold)
    fg_fit = fit_pc1 > t
    fg = pc1 > t
    fg_tokens = fit[torch.from_numpy(fg_fit)] if fg_fit.sum() >= 4 else fit  # too few to fit 3 components
    mean2, comp2, ratio2 = _pca(fg_tokens, 3)
    proj_fit = ((fg_tokens - mean2) @ comp2.T).numpy()
    lo, hi = np.percentile(proj_fit, 1, axis=0), np.percentile(proj_fit, 99, axis=0)
    proj = ((x - mean2) @ comp2.T).numpy()
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-8), 0.0, 1.0)
    if rgb.shape[1] < 3:  # fewer than 3 feature dimensions
        rgb = np.concatenate([rgb, np.zeros((len(rgb), 3 - rgb.shape[1]))], axis=1)
    rgb[~fg] = 0.0
    r2 = tuple(float(v) for v in ratio2.tolist()) + (0.0,) * (3 - len(ratio2))
    return FeatureMaps(pc1.reshape(n, gh, gw), fg.reshape(n, gh, gw), rgb.reshape(n, gh, gw, 3), t,
                       float(ratio[0]), r2[:3])


def upsample_maps(maps: np.ndarray, size: Sequence[int], mode: str = "nearest") -> np.ndarray:
    """(N, gh, gw[, C]) -> (N, H, W[, C]) with ``torch.nn.functional.interpolate`` (nearest or bilinear)."""
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be nearest or bilinear, got {mode!r}")
    t = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    chan = t.ndim == 4
    t = t.permute(0, 3, 1, 2) if chan else t[:, None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    t = F.interpolate(t, size=tuple(int(s) for s in size), mode=mode, **kw)
    return (t.permute(0, 2, 3, 1) if chan else t[:, 0]).numpy()


def draw_features(images: torch.Tensor, maps: FeatureMaps, *, upsample: str = "bilinear",
                  names: Sequence[str] | None = None, title: str = ""):
    """Three rows: the images, PC1 with the foreground boundary, and the foreground PCA as RGB."""
    from matplotlib.figure import Figure

    n = len(images)
    size = images.shape[-2:]
    rgb = upsample_maps(maps.rgb, size, upsample)
    # A soft foreground mask keeps bilinear colours from bleeding into the black background.
    fg_soft = upsample_maps(maps.foreground.astype(np.float32), size, upsample)
    rgb = np.clip(rgb * (fg_soft[..., None] if upsample == "bilinear" else 1.0), 0, 1)
    pc1 = upsample_maps(maps.pc1, size, upsample)
    fg_hard = upsample_maps(maps.foreground.astype(np.float32), size, "nearest")
    shown = to_display(images)
    fig = Figure(figsize=(1.6 * n + 0.6, 5.2), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    vmin, vmax = np.percentile(maps.pc1, 1), np.percentile(maps.pc1, 99)
    for i in range(n):
        axes[0, i].imshow(shown[i], cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=1)
        axes[1, i].imshow(pc1[i], cmap="viridis", vmin=vmin, vmax=vmax)
        axes[1, i].contour(fg_hard[i], levels=[0.5], colors="white", linewidths=0.8)
        axes[2, i].imshow(rgb[i])
        if names is not None:
            axes[0, i].set_title(panel_label(names[i]), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel(f"PC1 ({100 * maps.explained_pc1:.0f}% var)\nwhite: > {maps.threshold:.3g}", fontsize=8)
    ev = ", ".join(f"{100 * v:.0f}" for v in maps.explained_rgb)
    axes[2, 0].set_ylabel(f"foreground PCA → RGB\n({ev}% of fg var)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def feature_figure(encoder: torch.nn.Module, image_set: ImageSet, *, fit: ImageSet | None = None,
                   threshold: float | None = None, upsample: str = "bilinear", center: str = "position",
                   title: str = ""):
    """Encode, PCA, draw: the whole ``viz features`` picture for an encoder and a set of images (the PCA is fit
    on ``fit`` plus the shown images when ``fit`` is given). Returns (figure, maps)."""
    tokens = encode(encoder, image_set.images)
    fit_tokens = torch.cat([encode(encoder, fit.images), tokens]) if fit is not None else None
    maps = pca_feature_maps(tokens, encoder.grid_size, threshold=threshold, fit_tokens=fit_tokens, center=center)
    fig = draw_features(image_set.images, maps, upsample=upsample, names=image_set.names, title=title)
    return fig, maps


__all__ = ["FeatureMaps", "ImageSet", "draw_features", "encode", "encoder_input", "feature_figure", "load_images",
           "otsu_threshold", "panel_label", "pca_feature_maps", "pick_dataset", "save_figure", "to_display",
           "upsample_maps"]
