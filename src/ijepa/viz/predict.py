"""``ijepa viz predict``: the predictor as a world model — hide a box, predict its representation, look at it.

For each image a box of patches is hidden. The context encoder sees every patch outside the box, the predictor
predicts the representations inside it, and the prediction is rendered two ways:

- retrieval: each predicted patch representation is matched (cosine) with the target encoder's patch
  representations of a gallery of other images, and the best match's pixels are pasted into the box. Nothing is
  learnt on top of the model, so this shows what the representation *says*, in the dataset's own pixels;
- decoder: a :class:`~ijepa.viz.decoder.PixelDecoder`, trained on true target features only, decodes the token
  grid with the box's tokens replaced by the predictions. The same decoder on the true features everywhere is the
  "ground truth" panel: the best that lens can show.

:func:`box_specificity` measures whether a prediction is about *this* image: rendering image i's prediction
must be closer to image i's hidden content than rendering, in the same box, the prediction made from another
image's context.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import load_config
from ..interop import load
from ..masks import MaskConfig, MultiBlockMaskSampler
from . import VizError
from .decoder import PixelDecoder, check_decoder_fits, decoder_input
from .features import encode, encoder_input, panel_label, to_display

Box = tuple[int, int, int, int]  # (row, col, height, width) in patches
GREY = 0.5


@dataclass
class WorldModel:
    """The three networks of a trained I-JEPA: context encoder and predictor (to predict), target encoder (whose
    representations are predicted, and which builds the gallery)."""

    context_encoder: nn.Module
    predictor: nn.Module
    target_encoder: nn.Module
    source: str = ""

    @property
    def grid_size(self) -> tuple[int, int]:
        g = self.target_encoder.grid_size
        return int(g[0]), int(g[1])

    @property
    def patch_size(self) -> int:
        return int(self.target_encoder.patch_size)


def load_world_model(model: str | os.PathLike, path: str | None = None) -> WorldModel:
    """Context encoder + predictor and target encoder from one checkpoint (a run folder works)."""
    encoder, predictor = load(model, which="encoder", with_predictor=True, path=path)
    if predictor is None:
        raise VizError(f"{model} holds no predictor: `viz predict` needs a training checkpoint (a run folder, its "
                       "jepa-latest.pth.tar, the reference's .pth.tar, or an export made with --with-predictor)")
    target = load(model, which="target_encoder", path=path)
    # the file's description without the ": encoder" naming which of its encoders was loaded
    source = str(getattr(encoder, "source", model)).rsplit(": encoder", 1)[0]
    return WorldModel(encoder.eval(), predictor.eval(), target.eval(), source)


# ------------------------------------------------------------------------------------------------------- boxes


def parse_box(text: str) -> Box:
    """``"r0,c0,h,w"`` (patch units) -> a box."""
    try:
        r0, c0, h, w = (int(v) for v in text.split(","))
    except ValueError as e:
        raise VizError(f"a box is four integers r0,c0,h,w in patches, got {text!r}") from e
    return (r0, c0, h, w)


def box_ids(box: Box, grid: Sequence[int]) -> torch.Tensor:
    """Row-major patch ids inside ``box`` on a ``grid`` (raises when the box leaves the grid or covers it)."""
    r0, c0, h, w = box
    gh, gw = int(grid[0]), int(grid[1])
    if h < 1 or w < 1 or r0 < 0 or c0 < 0 or r0 + h > gh or c0 + w > gw:
        raise VizError(f"box (row {r0}, col {c0}, {h}x{w} patches) does not fit the {gh}x{gw} patch grid")
    if h * w == gh * gw:
        raise VizError("the box covers the whole grid: nothing would be left as context")
    rows = torch.arange(r0, r0 + h)[:, None] * gw
    return (rows + torch.arange(c0, c0 + w)[None, :]).flatten()


def context_ids(box: Box, grid: Sequence[int]) -> torch.Tensor:
    """Every patch id outside ``box``, ascending."""
    keep = torch.ones(int(grid[0]) * int(grid[1]), dtype=torch.bool)
    keep[box_ids(box, grid)] = False
    return keep.nonzero().squeeze(1)


def sample_boxes(grid: Sequence[int], n: int, seed: int = 0, mask_cfg: MaskConfig | None = None) -> list[Box]:
    """``n`` target-sized boxes, as the training sampler draws target blocks (scale and aspect ratio from
    ``mask_cfg``, the recipe's defaults otherwise), one independent draw per image."""
    cfg = mask_cfg or MaskConfig()
    one = dataclasses.replace(cfg, mode="default", num_enc_masks=1, num_pred_masks=1,
                              min_keep=min(cfg.min_keep, 1), allow_overlap=False)
    sampler = MultiBlockMaskSampler(tuple(int(v) for v in grid), one)
    gw = int(grid[1])
    boxes = []
    for i in range(n):
        _, (ids,) = sampler(1, torch.Generator().manual_seed(seed * 100003 + i))
        rows, cols = ids[0] // gw, ids[0] % gw
        r0, c0 = int(rows.min()), int(cols.min())
        boxes.append((r0, c0, int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1))
    return boxes


def mask_config_of(model: str | os.PathLike) -> MaskConfig | None:
    """The mask section of a run folder's ``config.yaml`` (None for anything else)."""
    cfg_path = Path(model) / "config.yaml"
    if not cfg_path.is_file():
        return None
    return load_config(str(cfg_path)).mask


# -------------------------------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_box(wm: WorldModel, images: torch.Tensor, boxes: Sequence[Box]) -> list[torch.Tensor]:
    """Predicted representations (K_i, D) of each image's box from the patches outside it, in the space the
    predictor was trained to regress (layer-normed target tokens). Images are [0, 1] (B, C, H, W)."""
    if len(boxes) != len(images):
        raise VizError(f"{len(images)} images but {len(boxes)} boxes")
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[Box, list[int]] = {}
    for i, b in enumerate(boxes):
        groups.setdefault(tuple(b), []).append(i)
    x = encoder_input(images, wm.context_encoder)
    for box, idx in groups.items():
        tgt = box_ids(box, wm.grid_size)
        ctx = context_ids(box, wm.grid_size)
        n = len(idx)
        masks_x = [ctx[None].expand(n, -1)]
        masks = [tgt[None].expand(n, -1)]
        z = wm.context_encoder(x[idx], masks_x)
        pred = wm.predictor(z, masks_x, masks).float()
        for j, i in enumerate(idx):
            out[i] = pred[j]
    return out  # type: ignore[return-value]


@dataclass
class Gallery:
    """Target-encoder patch representations of gallery images, unit-normed for cosine search, and their pixels."""

    features: torch.Tensor  # (G·N, D), unit norm
    pixels: torch.Tensor    # (G, C, H, W) in [0, 1]
    indices: list[int]      # dataset index of each gallery image
    grid_size: tuple[int, int]
    patch_size: int


def build_gallery(target_encoder: nn.Module, images: torch.Tensor, indices: Sequence[int] | None = None) -> Gallery:
    feats = decoder_input(encode(target_encoder, images))
    g = target_encoder.grid_size
    return Gallery(F.normalize(feats.reshape(-1, feats.shape[-1]), dim=-1), images.float(),
                   list(indices) if indices is not None else list(range(len(images))), (int(g[0]), int(g[1])),
                   int(target_encoder.patch_size))


def retrieve(gallery: Gallery, queries: torch.Tensor, *, exclude: int | None = None,
             positions: torch.Tensor | None = None, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query (K, D): the gallery (image, patch) whose representation is most cosine-similar.

    ``exclude``: a dataset index never to match (the query image, when it is in the gallery). ``positions`` (K,):
    restrict each query to gallery patches at that grid position."""
    q = F.normalize(queries.float(), dim=-1)
    n = gallery.grid_size[0] * gallery.grid_size[1]
    sim = torch.cat([q @ gallery.features[i:i + chunk * n].T for i in range(0, len(gallery.features), chunk * n)],
                    dim=1)  # (K, G·N)
    if exclude is not None and exclude in gallery.indices:
        g = gallery.indices.index(exclude)
        sim[:, g * n:(g + 1) * n] = -2.0
    if positions is not None:
        patch_of = torch.arange(sim.shape[1]) % n
        sim = sim.masked_fill(patch_of[None] != positions[:, None], -2.0)
    best = sim.argmax(1)
    return best // n, best % n


def _patch(pixels: torch.Tensor, pid: int, grid: tuple[int, int], p: int) -> torch.Tensor:
    r, c = divmod(int(pid), grid[1])
    return pixels[:, r * p:(r + 1) * p, c * p:(c + 1) * p]


def paste_retrieved(image: torch.Tensor, box: Box, gallery: Gallery, img_idx: torch.Tensor,
                    patch_idx: torch.Tensor) -> torch.Tensor:
    """``image`` (C, H, W) with each box patch replaced by its retrieved gallery patch."""
    out = image.clone()
    grid, p = gallery.grid_size, gallery.patch_size
    for pid, g, gp in zip(box_ids(box, grid).tolist(), img_idx.tolist(), patch_idx.tolist()):
        r, c = divmod(pid, grid[1])
        out[:, r * p:(r + 1) * p, c * p:(c + 1) * p] = _patch(gallery.pixels[g], gp, grid, p)
    return out


def grey_box(image: torch.Tensor, box: Box, p: int) -> torch.Tensor:
    out = image.clone()
    r0, c0, h, w = box
    out[:, r0 * p:(r0 + h) * p, c0 * p:(c0 + w) * p] = GREY
    return out


def box_pixels(images: torch.Tensor, box: Box, p: int) -> torch.Tensor:
    r0, c0, h, w = box
    return images[..., r0 * p:(r0 + h) * p, c0 * p:(c0 + w) * p]


@torch.no_grad()
def decode_with_box(decoder: PixelDecoder, true_tokens: torch.Tensor, boxes: Sequence[Box],
                    predictions: Sequence[torch.Tensor | None], grid: tuple[int, int]) -> torch.Tensor:
    """Decode token grids (B, N, D) whose box tokens are replaced by ``predictions`` (None: keep the truth)."""
    tokens = true_tokens.clone()
    for i, (box, pred) in enumerate(zip(boxes, predictions)):
        if pred is not None:
            tokens[i, box_ids(box, grid)] = pred.to(tokens.dtype)
    return decoder(tokens)


@dataclass
class Rendered:
    """Everything ``draw_predictions`` shows, (B, C, H, W) in [0, 1]; decoder panels are None without one."""

    original: torch.Tensor
    context: torch.Tensor
    retrieval: torch.Tensor | None
    decoded: torch.Tensor | None
    truth_decoded: torch.Tensor | None
    boxes: list[Box]
    patch_size: int


@torch.no_grad()
def render_predictions(wm: WorldModel, images: torch.Tensor, boxes: Sequence[Box], *,
                       gallery: Gallery | None = None, decoder: PixelDecoder | None = None,
                       exclude: Sequence[int] | None = None, same_position: bool = False) -> Rendered:
    """Predict each image's box and render it by retrieval (with a gallery) and by decoder (with one).

    ``exclude``: dataset index of each image, kept out of its own retrieval when it is in the gallery."""
    p, grid = wm.patch_size, wm.grid_size
    boxes = [tuple(b) for b in boxes]
    preds = predict_box(wm, images, boxes)
    context = torch.stack([grey_box(img, b, p) for img, b in zip(images, boxes)])
    retrieval = None
    if gallery is not None:
        pasted = []
        for i, (img, b, pr) in enumerate(zip(images, boxes, preds)):
            pos = box_ids(b, grid) if same_position else None
            gi, gp = retrieve(gallery, pr, exclude=None if exclude is None else exclude[i], positions=pos)
            pasted.append(paste_retrieved(img, b, gallery, gi, gp))
        retrieval = torch.stack(pasted)
    decoded = truth = None
    if decoder is not None:
        check_decoder_fits(decoder, wm.target_encoder)
        true_tokens = decoder_input(encode(wm.target_encoder, images))
        decoded = decode_with_box(decoder, true_tokens, boxes, preds, grid).clamp(0, 1)
        truth = decoder(true_tokens).clamp(0, 1)
    return Rendered(images.float(), context, retrieval, decoded, truth, list(boxes), p)


def _box_psnr(pred: torch.Tensor, truth: torch.Tensor, box: Box, p: int) -> float:
    mse = F.mse_loss(box_pixels(pred, box, p).float(), box_pixels(truth, box, p).float()).item()
    return 10 * float(np.log10(1.0 / max(mse, 1e-12)))


def draw_predictions(r: Rendered, *, names: Sequence[str] | None = None, title: str = ""):
    """One row per image: original, context only, retrieval, decoder prediction, decoder on the true features
    (columns without data are left out); the box outlined in every panel, box PSNR under the predictions."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    cols = [("original", r.original), ("context only", r.context)]
    if r.retrieval is not None:
        cols.append(("prediction: retrieval", r.retrieval))
    if r.decoded is not None:
        cols.append(("prediction: decoder", r.decoded))
        cols.append(("decoder on true features", r.truth_decoded))
    b, p = len(r.original), r.patch_size
    fig = Figure(figsize=(1.75 * len(cols) + 0.4, 1.85 * b + 0.6), layout="constrained")
    axes = fig.subplots(b, len(cols), squeeze=False)
    shown = [to_display(x) for _, x in cols]
    for i in range(b):
        r0, c0, h, w = r.boxes[i]
        for j, (label, data) in enumerate(cols):
            ax = axes[i, j]
            img = shown[j][i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.add_patch(Rectangle((c0 * p - 0.5, r0 * p - 0.5), w * p, h * p, fill=False, ec="#ff3b30", lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=8)
            if label.startswith("prediction"):
                ax.set_xlabel(f"box PSNR {_box_psnr(data[i], r.original[i], r.boxes[i], p):.1f} dB", fontsize=7)
            elif label.startswith("decoder on"):
                ax.set_xlabel(f"box PSNR {_box_psnr(data[i], r.original[i], r.boxes[i], p):.1f} dB", fontsize=7)
        if names is not None:
            axes[i, 0].set_ylabel(panel_label(names[i]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------- specificity


@torch.no_grad()
def box_specificity(wm: WorldModel, images: torch.Tensor, boxes: Sequence[Box], *,
                    decoder: PixelDecoder | None = None, gallery: Gallery | None = None,
                    exclude: Sequence[int] | None = None, shift: int = 1) -> dict[str, float]:
    """Is a prediction about *this* image? For image i and its box, compare with i's hidden content:

    - its own prediction (from i's context), and
    - the prediction for the same box made from image ``i - shift``'s context (another image of the batch).

    Returns means over the images of: ``feat_cos_own/other`` (cosine with the true layer-normed target tokens in
    the box), ``feat_centred_cos_own/other`` (the same after subtracting the batch's mean true token at each
    position), and with a decoder / gallery ``decoder_mse_own/other``, ``retrieval_mse_own/other`` (pixel MSE in
    the box against the real image; the decoder renders both with image i's true context tokens), plus the
    decoder's own floor ``decoder_mse_truth`` (true tokens in the box too) and ``mean_image_mse`` (the batch's
    mean image in the box).
    """
    if len(images) < 2:
        raise VizError("box_specificity needs at least two images")
    boxes = [tuple(b) for b in boxes]
    p, grid = wm.patch_size, wm.grid_size
    own = predict_box(wm, images, boxes)
    other = predict_box(wm, images.roll(shift, 0), boxes)  # other[i]: image (i - shift)'s context, box i
    true_tokens = decoder_input(encode(wm.target_encoder, images))
    # Tokens share a large per-position component (raw cosines are all near 1 for small models); the centred
    # cosine compares only what sets an image apart from the batch's average at that position.
    pos_mean = true_tokens.mean(0)
    res: dict[str, list[float]] = {k: [] for k in ("feat_cos_own", "feat_cos_other", "feat_centred_cos_own",
                                                   "feat_centred_cos_other")}
    for i, b in enumerate(boxes):
        ids = box_ids(b, grid)
        t, mu = true_tokens[i, ids], pos_mean[ids]
        for key, pred in (("own", own[i]), ("other", other[i])):
            res[f"feat_cos_{key}"].append(F.cosine_similarity(pred, t, dim=-1).mean().item())
            res[f"feat_centred_cos_{key}"].append(F.cosine_similarity(pred - mu, t - mu, dim=-1).mean().item())
    mean_img = images.float().mean(0)
    res["mean_image_mse"] = [F.mse_loss(box_pixels(mean_img, b, p), box_pixels(images[i].float(), b, p)).item()
                             for i, b in enumerate(boxes)]
    if decoder is not None:
        check_decoder_fits(decoder, wm.target_encoder)
        for key, preds in (("own", own), ("other", other), ("truth", [None] * len(images))):
            dec = decode_with_box(decoder, true_tokens, boxes, preds, grid).clamp(0, 1)
            res[f"decoder_mse_{key}"] = [
                F.mse_loss(box_pixels(dec[i], b, p), box_pixels(images[i].float(), b, p)).item()
                for i, b in enumerate(boxes)]
    if gallery is not None:
        for key, preds in (("own", own), ("other", other)):
            vals = []
            for i, b in enumerate(boxes):
                gi, gp = retrieve(gallery, preds[i], exclude=None if exclude is None else exclude[i])
                pasted = paste_retrieved(images[i].float(), b, gallery, gi, gp)
                vals.append(F.mse_loss(box_pixels(pasted, b, p), box_pixels(images[i].float(), b, p)).item())
            res[f"retrieval_mse_{key}"] = vals
    return {k: float(np.mean(v)) for k, v in res.items()}
