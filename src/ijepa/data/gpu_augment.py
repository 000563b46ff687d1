"""GPU-side augmentation for the folder and shard pipelines (``data.gpu_augment: true``).

Loader workers only decode each image and shrink it so that its longer side is at most ``max_size``, placing it in
the top-left corner of a ``max_size`` square canvas of uint8 (its last row and column repeated over the rest, so
that resampling at a box edge never reads padding). The batch's crops, flips, colour jitter, grayscale and blur then
run on the training device in one call (:class:`BatchAugment`), on the canvases and the images' own sizes.

The crop boxes follow torchvision's ``RandomResizedCrop`` rule, the worker path's: up to 10 draws of an area
fraction uniform in ``scale`` and an aspect ratio log-uniform in ``ratio``, rounded to pixels, the first that fits
the image, else the centre-crop fallback; drawn for each image's own (shrunk) size, so the boxes relative to the
image have the worker path's distribution (tests/test_gpu_augment.py compares the two). The colour, grayscale and
blur draws follow the worker path's (``get_color_distortion``, ``GaussianBlur``), the jitter's four operations in
a random order per image as torchvision does. Deliberate differences:

* resampling is ``roi_align``'s bilinear, averaging ``ceil(box / output)`` samples per output pixel along each axis
  (so downscaled boxes are antialiased) instead of PIL's bilinear filter, and it reads the image just outside a box
  edge where PIL clamps to the box;
* the blur is a Gaussian of standard deviation ``radius`` truncated at 3 × its largest value (PIL's
  ``GaussianBlur`` approximates a Gaussian with box filters);
* every random number is drawn on the CPU from one generator per batch, so a run is reproducible and resumable
  and the device never has to report back.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .decode import DECODE_ERRORS, Unreadable
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ConvertMode

# ITU-R 601-2 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale
LUMA = (0.299, 0.587, 0.114)
RRC_TRIES = 10  # torchvision's RandomResizedCrop draws at most this many boxes before its fallback


def default_max_size(crop_size: int) -> int:
    """The canvas side when ``data.gpu_augment_size`` is null: max(512, 2 x crop). ImageNet's images are mostly
    at most 500 pixels a side, so they reach the canvas without a resize (a resize of the whole image costs a worker
    more than the worker path's whole crop: benchmarks/loader.py), and a 512 uint8 canvas carries 1.3x the bytes of
    the worker path's float 224 crop through the loader queue; larger images are shrunk to fit."""
    return max(512, 2 * crop_size)


# --------------------------------------------------------------------------------------------- the workers


def to_canvas(image: torch.Tensor, max_size: int) -> torch.Tensor:
    """A uint8 (C, h, w) image in the top-left corner of a (C, max_size, max_size) canvas, its last column and row
    repeated over the rest."""
    c, h, w = image.shape
    canvas = torch.empty(c, max_size, max_size, dtype=torch.uint8)
    canvas[:, :h, :w] = image
    canvas[:, :h, w:] = image[:, :, w - 1:]
    canvas[:, h:, :] = canvas[:, h - 1:h, :]
    return canvas


def shrink(image: torch.Tensor, max_size: int) -> torch.Tensor:
    """Resize a uint8 (C, h, w) image (bilinear, antialiased) so that its longer side is at most ``max_size``."""
    h, w = image.shape[-2:]
    if max(h, w) <= max_size:
        return image
    s = max_size / max(h, w)
    import torchvision.transforms.functional as TF  # imported where used: ijepa.data.transforms says why

    return TF.resize(image, [max(1, min(max_size, round(h * s))), max(1, min(max_size, round(w * s)))],
                     interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


class DecodeShrink:
    """The workers' whole job in this path: an image (PIL, or the uint8 tensor ``decode_file`` gives) to
    ``(canvas, size)``: a uint8 (C, max_size, max_size) canvas and the int64 (h, w) of the image in it."""

    def __init__(self, max_size: int, in_chans: int = 3) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
        self.max_size, self.in_chans = max_size, in_chans
        self.mode = "L" if in_chans == 1 else "RGB"

    def __call__(self, img: Image.Image | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(img, Image.Image):
            img = ConvertMode(self.mode)(img)
            w, h = img.size
            if max(w, h) > self.max_size:  # PIL's resize of uint8 images is the faster one
                s = self.max_size / max(w, h)
                img = img.resize((max(1, min(self.max_size, round(w * s))), max(1, min(self.max_size, round(h * s)))),
                                 Image.BILINEAR)
            import torchvision.transforms.functional as TF

            img = TF.pil_to_tensor(img)
        x = shrink(img, self.max_size)
        return to_canvas(x, self.max_size), torch.tensor(x.shape[-2:], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_size={self.max_size}, in_chans={self.in_chans})"


def decode_file(path: str | Path, in_chans: int = 3) -> torch.Tensor | None:
    """libjpeg-turbo / libpng through ``torchvision.io.decode_image`` straight to a uint8 (C, h, w) tensor (what
    this path needs, without PIL's copy into a tensor), or None when torchvision cannot read the file."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(read_file(str(path)), mode=ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB)
    except RuntimeError:  # a format it does not read, or a damaged file: the PIL path decides
        return None


class CanvasFolder(torch.utils.data.Dataset):
    """A folder dataset (``ImageFolderDataset`` / ``FlatImageFolder``) read for this path: items ``((canvas, size),
    label)``, or None for a file that cannot be used. The dataset must have been built with a :class:`DecodeShrink`
    transform, so that its own ``read`` (PIL, the pixel limit, JPEG draft decoding) gives canvases too.

    ``decoder="torchvision"``: images that fit the canvas already (most of ImageNet) and are within the dataset's
    pixel limit are decoded by :func:`decode_file`, the faster route to a tensor; everything else, and whatever
    torchvision cannot read, goes through the dataset's ``read``, which skips and names unusable files. ``"pil"``:
    always the dataset's ``read``."""

    def __init__(self, dataset, decoder: str = "torchvision") -> None:
        if decoder not in ("torchvision", "pil"):
            raise ValueError(f"decoder must be 'torchvision' or 'pil', got {decoder!r}")
        if not isinstance(dataset.transform, DecodeShrink):
            raise TypeError(f"CanvasFolder needs a dataset whose transform is a DecodeShrink, got {dataset.transform}")
        self.dataset, self.decoder, self.transform = dataset, decoder, dataset.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def _fits(self, path: str) -> bool:
        """From the header only: small enough for the canvas and within the pixel limit."""
        try:
            with Image.open(path) as img:
                w, h = img.size
        except DECODE_ERRORS:
            return False
        limit = self.dataset.max_pixels
        return max(w, h) <= self.transform.max_size and (limit is None or w * h <= limit)

    def read(self, index: int):
        """``((canvas, size), label)`` or an :class:`~ijepa.data.decode.Unreadable`, as the datasets' ``read``."""
        path, label = self.dataset.samples[index]
        if self.decoder == "torchvision" and self._fits(path):
            img = decode_file(path, self.transform.in_chans)
            if img is not None:
                return self.transform(img), label
        return self.dataset.read(index)

    def __getitem__(self, index: int):
        item = self.read(index)
        return None if isinstance(item, Unreadable) else item


# ------------------------------------------------------------------------------------------- the device


def sample_crop_boxes(heights: torch.Tensor, widths: torch.Tensor, scale: Sequence[float] = (0.3, 1.0),
                      ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """torchvision RandomResizedCrop's boxes for images of these sizes (int (B,) each), vectorised: float64 (B, 4)
    as (x0, y0, w, h) in whole pixels. Draws B × 10 × 4 uniforms whatever the sizes."""
    h, w = heights.double(), widths.double()
    u = torch.rand(len(h), RRC_TRIES, 4, generator=generator, dtype=torch.float64)
    area = (h * w)[:, None] * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + u[..., 1] * (hi - lo))
    bw, bh = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    fits = (bw > 0) & (bw <= w[:, None]) & (bh > 0) & (bh <= h[:, None])
    first = fits.int().argmax(dim=1, keepdim=True)  # the first box that fits (index 0 when none does)
    pick = lambda t: t.gather(1, first)[:, 0]
    bw, bh = pick(bw), pick(bh)
    x0 = torch.floor(pick(u[..., 3]) * (w - bw + 1))  # randint(0, w - bw + 1)
    y0 = torch.floor(pick(u[..., 2]) * (h - bh + 1))
    # the fallback: the largest centred box whose aspect ratio is inside the range
    in_ratio = w / h
    fw = torch.where(in_ratio > ratio[1], torch.round(h * ratio[1]), w)
    fh = torch.where(in_ratio < ratio[0], torch.round(w / ratio[0]), h)
    none = ~fits.any(dim=1)
    bw, bh = torch.where(none, fw, bw), torch.where(none, fh, bh)
    x0 = torch.where(none, torch.floor((w - fw) / 2), x0)
    y0 = torch.where(none, torch.floor((h - fh) / 2), y0)
    return torch.stack([x0, y0, bw, bh], dim=1)


@dataclass
class AugmentParams:
    """One batch's draws, on the CPU: boxes (B, 4) float64 (x0, y0, w, h); flip, jitter, gray, blur bool (B,);
    factors (B, 4) float (brightness, contrast, saturation, hue); order (B, 4) int (the jitter's operation order);
    sigma (B,) float."""

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor


class BatchAugment:
    """The worker path's pretraining augmentation (``make_pretrain_transform``), for a whole batch of canvases on
    the device in one call: random-resized crop, optional flip, colour distortion and blur, then normalisation.

    ``__call__(canvases, sizes, generator)``: canvases uint8 (B, C, S, S) on any device, sizes int (B, 2) (h, w);
    returns float32 (B, C, size, size), normalised with ``mean`` / ``std``."""

    def __init__(self, size: int, scale: Sequence[float] = (0.3, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 horizontal_flip: bool = False, color_distortion: bool = False, color_jitter_strength: float = 0.0,
                 gaussian_blur: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        if not 0.0 <= 0.2 * color_jitter_strength <= 0.5:
            raise ValueError(f"color_jitter_strength must be in [0, 2.5] (hue shift 0.2 x strength <= 0.5), got "
                             f"{color_jitter_strength}")
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.horizontal_flip, self.color_distortion, self.gaussian_blur = horizontal_flip, color_distortion, \
            gaussian_blur
        self.strength = color_jitter_strength
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_config(cls, cfg, mean: Sequence[float], std: Sequence[float]) -> BatchAugment:
        """The augmentation a data config (:class:`ijepa.config_sections.DataConfig`) describes, as the worker
        path's."""
        return cls(cfg.crop_size, cfg.crop_scale, horizontal_flip=cfg.use_horizontal_flip,
                   color_distortion=cfg.use_color_distortion, color_jitter_strength=cfg.color_jitter_strength,
                   gaussian_blur=cfg.use_gaussian_blur, mean=mean, std=std)

    # -- the draws (CPU)

    def sample(self, sizes: torch.Tensor, generator: torch.Generator | None = None) -> AugmentParams:
        """Every draw for a batch of images of these sizes. The boxes come first and the other draws are made
        whatever the options, so a batch's boxes do not depend on which options are on."""
        sizes = sizes.cpu()
        b = len(sizes)
        boxes = sample_crop_boxes(sizes[:, 0], sizes[:, 1], self.scale, self.ratio, generator)
        u = torch.rand(b, 10, generator=generator)
        s = 0.8 * self.strength
        lo = max(0.0, 1.0 - s)
        factors = torch.stack([lo + u[:, 0] * (1 + s - lo), lo + u[:, 1] * (1 + s - lo),
                               lo + u[:, 2] * (1 + s - lo), (2 * u[:, 3] - 1) * 0.2 * self.strength], dim=1)
        order = torch.argsort(u[:, 4:8], dim=1)
        on = self.color_distortion
        return AugmentParams(
            boxes=boxes, flip=(u[:, 8] < 0.5) & self.horizontal_flip,
            jitter=(torch.rand(b, generator=generator) < 0.8) & (on and self.strength > 0), factors=factors,
            order=order, gray=(torch.rand(b, generator=generator) < 0.2) & on,
            blur=(u[:, 9] < 0.5) & self.gaussian_blur, sigma=0.1 + torch.rand(b, generator=generator) * 1.9)

    # -- the work (device)

    def __call__(self, canvases: torch.Tensor, sizes: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(canvases, self.sample(sizes, generator))

    def apply(self, canvases: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        if canvases.ndim != 4 or canvases.dtype != torch.uint8:
            raise ValueError(f"expected uint8 canvases (B, C, S, S), got {canvases.dtype} {tuple(canvases.shape)}")
        dev = canvases.device
        x = self.crop(canvases, p.boxes.to(dev, non_blocking=True))
        if p.flip.any():
            x = torch.where(p.flip.to(dev, non_blocking=True)[:, None, None, None], x.flip(-1), x)
        if p.jitter.any():
            x = jitter(x, p.factors, p.order, p.jitter)
        if p.gray.any() and x.shape[1] == 3:
            x = torch.where(p.gray.to(dev, non_blocking=True)[:, None, None, None], grayscale(x).expand_as(x), x)
        if p.blur.any():
            x = blur_subset(x, p.blur, p.sigma)
        mean = torch.tensor(self.mean, device=dev).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=dev).view(1, -1, 1, 1)
        return (x - mean) / std

    def crop(self, canvases: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """roi_align of each box (pixel edges, ``aligned=True``) to size × size, as float in [0, 1]."""
        from torchvision.ops import roi_align

        x0, y0, bw, bh = boxes.float().unbind(1)
        rois = torch.stack([torch.arange(len(boxes), device=boxes.device, dtype=torch.float32), x0, y0,
                            x0 + bw, y0 + bh], dim=1)
        out = roi_align(canvases.float(), rois, (self.size, self.size), spatial_scale=1.0, sampling_ratio=-1,
                        aligned=True)
        return out.div_(255.0).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"horizontal_flip={self.horizontal_flip}, color_distortion={self.color_distortion}, "
                f"color_jitter_strength={self.strength}, gaussian_blur={self.gaussian_blur})")


# ---------------------------------------------------------------------- colour and blur on a float batch


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) luma."""
    return (x * torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * a + (1 - f) * b).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (B, 3, H, W) in [0, 1] by ``shift`` (B, 1, 1, 1) turns, through HSV."""
    mx, argmx = x.max(dim=1, keepdim=True)
    mn = x.min(dim=1, keepdim=True).values
    chroma = mx - mn
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    r, g, b = x.split(1, dim=1)
    h = torch.where(argmx == 0, ((g - b) / safe) % 6, torch.where(argmx == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(chroma > 0, h / 6, torch.zeros_like(h))
    h = (h + shift) % 1.0
    s = torch.where(mx > 0, chroma / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    # HSV -> RGB: each channel n in (5, 3, 1) is v - v·s·clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (n + 6 * h) % 6
    return mx - mx * s * torch.minimum(k, 4 - k).clamp(0.0, 1.0)


def _jitter_op(x: torch.Tensor, op: int, f: torch.Tensor) -> torch.Tensor:
    """One of ColorJitter's operations (0 brightness, 1 contrast, 2 saturation, 3 hue) with factors f (n, 1, 1, 1)."""
    rgb = x.shape[1] == 3
    if op == 0:
        return (x * f).clamp_(0.0, 1.0)
    if op == 1:
        gray = grayscale(x) if rgb else x
        return _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), f)
    if not rgb:  # saturation and hue do nothing to one-channel images, as in torchvision
        return x
    return _blend(x, grayscale(x), f) if op == 2 else adjust_hue(x, f)


def jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """torchvision ColorJitter per image, where ``on``: brightness, contrast, saturation and hue factors
    (``factors`` (B, 4), CPU) applied in each image's own order (``order`` (B, 4) of operation ids, CPU). The images
    that share an order go through it together: one gather and one scatter per order present."""
    dev = x.device
    todo = torch.nonzero(on)[:, 0]
    if not len(todo):
        return x
    orders, group = torch.unique(order[todo], dim=0, return_inverse=True)
    out = x.clone()
    for g, ops in enumerate(orders.tolist()):
        idx = todo[group == g]
        d = idx.to(dev, non_blocking=True)
        sub = x.index_select(0, d)
        f = factors[idx].to(dev, dtype=x.dtype, non_blocking=True)
        for op in ops:
            sub = _jitter_op(sub, op, f[:, op].view(-1, 1, 1, 1))
        out.index_copy_(0, d, sub)
    return out


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(n, 2·radius + 1) normalised 1-D Gaussians of these standard deviations."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None] / sigma.float()[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def blur_subset(x: torch.Tensor, on: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian-blur the images where ``on`` (CPU bool (B,)) with their own ``sigma``: two 1-D passes of a grouped
    convolution, reflecting at the borders."""
    idx = torch.nonzero(on)[:, 0]
    radius = max(1, math.ceil(3 * float(sigma[idx].max())))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)  # reflection needs the image to be wider than that
    dev = x.device
    d = idx.to(dev, non_blocking=True)
    sub = x.index_select(0, d)
    n, c, h, w = sub.shape
    k = gaussian_kernels(sigma[idx], radius).to(dev, non_blocking=True).repeat_interleave(c, dim=0)
    y = sub.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(n * c, 1, -1, 1), groups=n * c)
    return x.index_copy(0, d, y.view(n, c, h, w))


__all__ = ["AugmentParams", "BatchAugment", "CanvasFolder", "DecodeShrink", "adjust_hue", "blur_subset",
           "decode_file", "default_max_size", "gaussian_kernels", "grayscale", "jitter", "sample_crop_boxes",
           "shrink", "to_canvas"]
