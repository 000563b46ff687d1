"""``ijepa viz masks``: training crops with the context and target blocks the real sampler draws for them.

The overlay is painted into an RGB array cell by cell (one cell per patch) so that what is drawn can be read
back from the pixels: :func:`drawn_patches` decodes each cell's colours, and the tests compare that with the
sampler's ids. Painting rules, per patch cell:

- every mask covering the cell (the context, and each target block) gets a vertical stripe of the cell, in that
  mask's colour blended over the image — a patch in two target blocks is striped in both colours;
- a patch in no mask (dropped: neither seen nor predicted) is washed out to grey;
- each target block is outlined in its colour along its boundary, and a faint grid marks the patches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config, load_config
from ..data.shards.remote import join_root
from ..data.sources import mode_for, normalisation, open_images
from ..data.transforms import BatchRandomResizedCrop, make_pretrain_transform
from ..masks import MultiBlockMaskSampler

# (colour, alpha) of each layer. The context tint is light so the image stays readable; targets are strong.
CONTEXT_STYLE = ((0.20, 0.60, 1.00), 0.30)
DROPPED_STYLE = ((0.55, 0.55, 0.55), 0.75)
TARGET_COLOURS = ((1.00, 0.50, 0.05), (0.17, 0.75, 0.17), (0.90, 0.10, 0.15), (0.70, 0.30, 0.95),
                  (1.00, 0.90, 0.10), (0.95, 0.40, 0.75), (0.55, 0.35, 0.15), (0.10, 0.90, 0.90))
TARGET_ALPHA = 0.55
# Cells are at least this many pixels wide, so stripes and outlines stay visible (and decodable).
MIN_CELL_PX = 32


@dataclass
class MaskBatch:
    """Images (B, C, H, W) in [0, 1] and the sampler's masks for them, as the training loop would see them."""

    images: torch.Tensor
    masks_enc: list[torch.Tensor]
    masks_pred: list[torch.Tensor]
    grid_size: tuple[int, int]
    patch_size: int
    title: str = ""


def target_colour(k: int) -> tuple[float, float, float]:
    return TARGET_COLOURS[k % len(TARGET_COLOURS)]


def _styles(num_targets: int) -> list[tuple[np.ndarray, float]]:
    """Label -> (colour, alpha): 0 dropped, 1 context, 2 + k target k."""
    styles = [DROPPED_STYLE, CONTEXT_STYLE] + [(target_colour(k), TARGET_ALPHA) for k in range(num_targets)]
    return [(np.asarray(c, dtype=np.float64), a) for c, a in styles]


def _as_rgb(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, C, H, W) or (B, H, W) in [0, 1] (or uint8) -> float64 (B, H, W, 3)."""
    x = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.dtype == np.uint8:
        x = x.astype(np.float64) / 255.0
    x = x.astype(np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    elif x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got images shaped {tuple(x.shape)}")
    return np.clip(x.transpose(0, 2, 3, 1), 0.0, 1.0)


def default_scale(patch_size: int) -> int:
    """Upscaling factor that makes each patch cell at least ``MIN_CELL_PX`` pixels wide."""
    return max(1, math.ceil(MIN_CELL_PX / patch_size))


def _line_width(cell: int) -> int:
    return max(1, cell // 16)


def _membership(masks_enc: Sequence[torch.Tensor], masks_pred: Sequence[torch.Tensor], grid_size: tuple[int, int],
                context: int) -> np.ndarray:
    """Bool (B, 1 + num_targets, gh·gw): row 0 the chosen context mask, then each target block."""
    n = grid_size[0] * grid_size[1]
    rows = [masks_enc[context]] + list(masks_pred)
    b = rows[0].shape[0]
    member = np.zeros((b, len(rows), n), dtype=bool)
    for j, m in enumerate(rows):
        ids = m.detach().cpu().numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"patch ids must lie in [0, {n}) for a {grid_size[0]}x{grid_size[1]} grid")
        np.put_along_axis(member[:, j], ids, True, axis=1)
    return member


def render_masks(images: torch.Tensor | np.ndarray, masks_enc: Sequence[torch.Tensor],
                 masks_pred: Sequence[torch.Tensor], grid_size: Sequence[int], patch_size: int, *,
                 context: int = 0, scale: int | None = None) -> np.ndarray:
    """Paint context mask ``context`` and every target block over each image.

    Args:
        images: (B, C, H, W) or (B, H, W), floats in [0, 1] or uint8; C is 1 or 3.
        masks_enc, masks_pred: the sampler's output (lists of (B, K) row-major patch ids).
        grid_size: (rows, cols) of patches; patch_size: pixels per patch side.
        scale: integer upscaling (default: enough for 32-pixel patch cells).

    Returns uint8 (B, H·scale, W·scale, 3). See the module docstring for the painting rules.
    """
    gh, gw = int(grid_size[0]), int(grid_size[1])
    rgb = _as_rgb(images)
    b, h, w, _ = rgb.shape
    if (h, w) != (gh * patch_size, gw * patch_size):
        raise ValueError(f"images of {h}x{w} px do not match a {gh}x{gw} grid of {patch_size}-px patches")
    s = scale or default_scale(patch_size)
    cell = patch_size * s
    base = rgb.repeat(s, axis=1).repeat(s, axis=2)
    out = base.copy()
    member = _membership(masks_enc, masks_pred, (gh, gw), context)
    styles = _styles(len(masks_pred))
    lw = _line_width(cell)
    margin = lw + 1
    for i in range(b):
        for pid in range(gh * gw):
            r, c = divmod(pid, gw)
            y0, x0 = r * cell, c * cell
            labels = [j + 1 for j in np.flatnonzero(member[i, :, pid])] or [0]
            # Stripes split the interior (inside the outline margin) so each keeps some undisturbed columns;
            # the margins take the colour of the nearest stripe.
            edges = np.linspace(margin, cell - margin, len(labels) + 1).round().astype(int)
            edges[0], edges[-1] = 0, cell
            for lab, a, z in zip(labels, edges[:-1], edges[1:]):
                colour, alpha = styles[lab]
                tile = base[i, y0:y0 + cell, x0 + a:x0 + z]
                out[i, y0:y0 + cell, x0 + a:x0 + z] = (1 - alpha) * tile + alpha * colour
        # faint patch grid: darken the first row and column of every cell
        out[i, ::cell, :] *= 0.6
        out[i, :, ::cell] *= 0.6
        for k in range(len(masks_pred)):
            _outline(out[i], member[i, k + 1].reshape(gh, gw), cell, lw, np.asarray(target_colour(k)))
    return (out * 255.0 + 0.5).astype(np.uint8)


def _outline(canvas: np.ndarray, block: np.ndarray, cell: int, lw: int, colour: np.ndarray) -> None:
    """Draw the boundary of a set of cells (any shape) ``lw`` pixels thick, inside the cells."""
    gh, gw = block.shape
    for r, c in zip(*np.nonzero(block)):
        y0, x0 = r * cell, c * cell
        if r == 0 or not block[r - 1, c]:
            canvas[y0:y0 + lw, x0:x0 + cell] = colour
        if r == gh - 1 or not block[r + 1, c]:
            canvas[y0 + cell - lw:y0 + cell, x0:x0 + cell] = colour
        if c == 0 or not block[r, c - 1]:
            canvas[y0:y0 + cell, x0:x0 + lw] = colour
        if c == gw - 1 or not block[r, c + 1]:
            canvas[y0:y0 + cell, x0 + cell - lw:x0 + cell] = colour


def drawn_patches(rendered: np.ndarray, images: torch.Tensor | np.ndarray, grid_size: Sequence[int],
                  patch_size: int, num_targets: int) -> list[tuple[set[int], list[set[int]]]]:
    """Read back, from the pixels of :func:`render_masks`, which patches were drawn as context and as each target.

    Each cell's middle row (inside the outline margin) is compared, column by column, with what every label
    would paint over the original image there; the labels found are the cell's memberships. Returns, per image,
    ``(context_ids, [target_ids_0, target_ids_1, ...])``.
    """
    gh, gw = int(grid_size[0]), int(grid_size[1])
    rgb = _as_rgb(images)
    b, h, w, _ = rgb.shape
    s = rendered.shape[1] // h
    cell = patch_size * s
    base = rgb.repeat(s, axis=1).repeat(s, axis=2)
    styles = _styles(num_targets)
    lw = _line_width(cell)
    lo, hi = lw + 1, cell - lw - 1
    found: list[tuple[set[int], list[set[int]]]] = []
    for i in range(b):
        ctx: set[int] = set()
        tgts: list[set[int]] = [set() for _ in range(num_targets)]
        for pid in range(gh * gw):
            r, c = divmod(pid, gw)
            y, x0 = r * cell + cell // 2, c * cell
            seen = rendered[i, y, x0 + lo:x0 + hi].astype(np.float64) / 255.0  # (cols, 3)
            under = base[i, y, x0 + lo:x0 + hi]
            expected = np.stack([(1 - a) * under + a * col for col, a in styles])  # (labels, cols, 3)
            labels = set(np.abs(expected - seen[None]).sum(-1).argmin(0).tolist())
            if 1 in labels:
                ctx.add(pid)
            for k in range(num_targets):
                if k + 2 in labels:
                    tgts[k].add(pid)
        found.append((ctx, tgts))
    return found


# ------------------------------------------------------------------------------------------ data and sampling


def sampler_from_config(cfg: Config) -> MultiBlockMaskSampler:
    """The sampler exactly as ``ijepa train`` builds it from a config."""
    m = cfg.mask
    grid = cfg.data.crop_size // m.patch_size
    return MultiBlockMaskSampler((grid, grid), m)


def training_images(cfg: Config, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` training images (B, C, crop, crop) in [0, 1] through the config's real crop transform.

    Fashion-MNIST goes through the batch crop the in-memory pipeline uses; folders and shards through the
    per-image PIL transform, un-normalised for display.
    """
    d = cfg.data
    g = torch.Generator().manual_seed(seed)
    if d.dataset == "fashion_mnist":
        images = open_images("fashion_mnist", d.root_path, split="train").images
        idx = torch.randperm(len(images), generator=g)[:n]
        x = images[idx][:, None].expand(-1, d.in_chans, -1, -1)
        crop = BatchRandomResizedCrop(d.crop_size, scale=d.crop_scale, horizontal_flip=d.use_horizontal_flip)
        return crop(x, g)
    mean, std = normalisation(d.dataset, d.in_chans)
    mean, std = d.mean or mean, d.std or std
    tf = make_pretrain_transform(crop_size=d.crop_size, crop_scale=d.crop_scale, horizontal_flip=d.use_horizontal_flip,
                                 color_distortion=d.use_color_distortion,
                                 color_jitter_strength=d.color_jitter_strength, gaussian_blur=d.use_gaussian_blur,
                                 mean=mean, std=std, in_chans=d.in_chans)
    root = join_root(d.root_path or ".", d.image_folder)  # shards: a URL stays one
    kw = {"shuffle": False} if d.dataset == "shards" else {}
    ds = open_images(d.dataset, root, transform=tf, mode=mode_for(d.in_chans), **kw)
    items = []
    # torchvision's transforms draw from the global RNG: seed it for reproducible pictures, then restore it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = iter(ds) if d.dataset == "shards" else (ds[i] for i in torch.randperm(len(ds), generator=g).tolist())
        for item in order:
            if item is not None:
                items.append(item[0])
            if len(items) >= n:
                break
    x = torch.stack(items)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


def mask_batch(config: str | None = None, overrides: Sequence[str] = (), n: int = 8, seed: int = 0) -> MaskBatch:
    """Images and masks for a config (a shipped name, a YAML file — e.g. a run's ``config.yaml`` — or the CPU
    default), through the same crop and sampler as training; ``seed`` fixes both."""
    cfg = load_config(config, list(overrides))
    sampler = sampler_from_config(cfg)
    images = training_images(cfg, n, seed)
    masks_enc, masks_pred = sampler(len(images), torch.Generator().manual_seed(seed + 1))
    m = cfg.mask
    title = (f"{config or 'fmnist_cpu'}: {cfg.data.crop_size} px, {sampler.height}x{sampler.width} patches of "
             f"{m.patch_size} px, mode={m.mode}; context {masks_enc[0].shape[1]} patches, "
             f"{len(masks_pred)} targets of {masks_pred[0].shape[1]} patches")
    return MaskBatch(images, masks_enc, masks_pred, (sampler.height, sampler.width), m.patch_size, title)


def draw_masks(images: torch.Tensor, masks_enc: Sequence[torch.Tensor], masks_pred: Sequence[torch.Tensor],
               grid_size: Sequence[int], patch_size: int, *, ncols: int = 4, title: str = "",
               show_images: bool = True):
    """A figure with, per image (and per context mask when there are several), the plain crop beside the
    overlay of :func:`render_masks`, and a legend. ``ncols`` counts images per row.

    Returns a ``matplotlib.figure.Figure``; :func:`render_masks` gives the overlays as arrays."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    plain = (_as_rgb(images) * 255.0 + 0.5).astype(np.uint8)
    panels: list[list[tuple[np.ndarray, str]]] = []
    for e in range(len(masks_enc)):
        rendered = render_masks(images, masks_enc, masks_pred, grid_size, patch_size, context=e)
        for i in range(len(rendered)):
            which = f" (context mask {e + 1})" if len(masks_enc) > 1 else ""
            group = [(plain[i], f"#{i} crop")] if show_images else []
            group.append((rendered[i], f"#{i}{which}: {masks_enc[e].shape[1]} context"))
            panels.append(group)
    per = len(panels[0])
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(1.9 * per * ncols, 2.1 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols * per, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for g, group in enumerate(panels):
        r, c = divmod(g, ncols)
        for j, (img, label) in enumerate(group):
            ax = axes[r, c * per + j]
            ax.imshow(img, interpolation="nearest")
            ax.set_title(label, fontsize=8)
    handles = [Patch(color=CONTEXT_STYLE[0], alpha=0.8, label="context (encoder input)"),
               Patch(color=DROPPED_STYLE[0], label="dropped (neither)")]
    handles += [Patch(color=target_colour(k), label=f"target {k + 1}") for k in range(len(masks_pred))]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
