"""Image transforms: the I-JEPA pretraining pipeline on PIL images, an evaluation pipeline, and a
vectorised random-resized-crop for whole batches already in memory.

All per-image transforms are classes (no lambdas or closures) so they pickle into DataLoader worker
processes under the ``spawn`` start method too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from ..spec import IMAGENET_MEAN, IMAGENET_STD  # re-exported: the data layer's users import them from here

if TYPE_CHECKING:
    import torchvision.transforms as T

# torchvision is imported where a PIL pipeline is built, not here: it costs every `ijepa` process about a second,
# and the in-memory paths (Fashion-MNIST training, probes, the batch crop below) never use it.


class ConvertMode:
    """Convert a PIL image, or a uint8 ``(C, H, W)`` tensor, to a PIL image in ``mode`` ("L" or "RGB").

    Accepting tensors lets the PIL pipelines run on :class:`~ijepa.data.datasets.TensorImageDataset`.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image | torch.Tensor) -> Image.Image:
        if isinstance(img, torch.Tensor):
            import torchvision.transforms.functional as TF

            img = TF.to_pil_image(img)
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


class GaussianBlur:
    """With probability ``p``, blur a PIL image with a radius uniform in [radius_min, radius_max].

    Same behaviour as the reference implementation's blur; randomness comes from torch's global RNG,
    which DataLoader seeds differently in every worker.
    """

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.prob = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.prob:
            return img
        radius = self.radius_min + torch.rand(()).item() * (self.radius_max - self.radius_min)
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.prob}, radius=({self.radius_min}, {self.radius_max}))"


def get_color_distortion(strength: float = 1.0) -> T.Compose:
    """SimCLR-style colour distortion as in the reference: jitter (p=0.8) then grayscale (p=0.2).

    With ``strength=0`` the jitter is the identity but the random grayscale still applies, exactly as
    in the reference with its configs' ``color_jitter_strength: 0.0``.
    """
    s = strength
    import torchvision.transforms as T

    jitter = T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    return T.Compose([T.RandomApply([jitter], p=0.8), T.RandomGrayscale(p=0.2)])


def _mode_for(in_chans: int) -> str:
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
    return "L" if in_chans == 1 else "RGB"


def make_pretrain_transform(
    crop_size: int = 224,
    crop_scale: tuple[float, float] = (0.3, 1.0),
    horizontal_flip: bool = False,
    color_distortion: bool = False,
    color_jitter_strength: float = 0.0,
    gaussian_blur: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    in_chans: int = 3,
) -> T.Compose:
    """The I-JEPA pretraining augmentation: RandomResizedCrop(crop_size, crop_scale), optional flip,
    optional colour distortion and blur (p=0.5), ToTensor, Normalize.

    Input: PIL image or uint8 ``(C, H, W)`` tensor; output: float ``(in_chans, crop_size, crop_size)``.
    I-JEPA's own ImageNet configs use only the crop; the rest exists for ablations.
    """
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std need {in_chans} values for in_chans={in_chans}, got {mean} / {std}")
    import torchvision.transforms as T

    ops: list = [ConvertMode(_mode_for(in_chans)), T.RandomResizedCrop(crop_size, scale=tuple(crop_scale))]
    if horizontal_flip:
        ops.append(T.RandomHorizontalFlip())
    if color_distortion:
        ops.append(get_color_distortion(color_jitter_strength))
    if gaussian_blur:
        ops.append(GaussianBlur(p=0.5))
    ops += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(ops)


def make_eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], in_chans: int = 3,
                        crop_pct: float = 1.0) -> T.Compose:
    """Deterministic: resize the short side to ``floor(img_size / crop_pct)`` (bicubic), centre crop
    ``img_size``, ToTensor, Normalize. ``crop_pct=0.875`` gives the classic 256 -> 224 ImageNet eval."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std need {in_chans} values for in_chans={in_chans}, got {mean} / {std}")
    resize = math.floor(img_size / crop_pct)
    import torchvision.transforms as T

    return T.Compose([
        ConvertMode(_mode_for(in_chans)),
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(tuple(mean), tuple(std)),
    ])


def normalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel for a float batch ``(B, C, H, W)`` (not in place)."""
    if not x.is_floating_point():
        raise TypeError(f"normalize_batch expects a float tensor, got {x.dtype}")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class BatchRandomResizedCrop:
    """Random-resized-crop of a whole batch ``(B, C, H, W)`` in one ``affine_grid`` + ``grid_sample``.

    For in-memory datasets this replaces per-image PIL work in DataLoader workers, which on a machine
    with few cores would take compute away from training. Each image gets its own box, and (with
    ``horizontal_flip``) a flip with probability 1/2. All randomness comes from ``generator`` (torch's
    global RNG if ``None``), so a run is reproducible from the generator's state.

    Box sampling follows torchvision's RandomResizedCrop: area fraction uniform in ``scale``, aspect
    ratio log-uniform in ``ratio``. Differences, deliberate:

    * Instead of torchvision's up to 10 rejection tries followed by a centre-crop fallback, the
      sampled log-ratio is clamped to the interval where a box of the sampled area fits inside the
      image. The area is always honoured; with ``scale=(1, 1)`` the box is the whole image, as with
      torchvision's fallback.
    * Box corners and sizes are continuous (sub-pixel) rather than rounded to integers.
    * Resampling is bilinear without antialiasing, so strong downscaling aliases (as
      ``F.interpolate(..., antialias=False)`` would); I-JEPA's crops are mostly upscaled.

    ``__call__`` returns a float tensor ``(B, C, size, size)``; uint8 input is scaled to [0, 1], float
    input is taken as already in [0, 1] and keeps its dtype.
    """

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.3, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), horizontal_flip: bool = False) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.horizontal_flip = horizontal_flip

    def sample_boxes(self, batch: int, height: int, width: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``boxes`` float64 ``(B, 4)`` as ``(x0, y0, w, h)`` in pixels and ``flip`` bool ``(B,)``.

        Five uniforms are drawn per image whatever ``horizontal_flip`` is, so the boxes for a given
        generator state do not depend on whether flipping is enabled.
        """
        device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(batch, 5, generator=generator, device=device, dtype=torch.float64)
        area = height * width * (self.scale[0] + u[:, 0] * (self.scale[1] - self.scale[0]))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        log_r = lo + u[:, 1] * (hi - lo)
        # w = sqrt(area * r) <= W and h = sqrt(area / r) <= H  <=>  area / H^2 <= r <= W^2 / area.
        log_r = torch.minimum(torch.maximum(log_r, torch.log(area / height**2)), torch.log(width**2 / area))
        r = torch.exp(log_r)
        # The clamps only absorb rounding from exp/log at the boundary.
        w = torch.sqrt(area * r).clamp(max=width)
        h = torch.sqrt(area / r).clamp(max=height)
        x0 = u[:, 2] * (width - w)
        y0 = u[:, 3] * (height - h)
        flip = u[:, 4] < 0.5
        if not self.horizontal_flip:
            flip = torch.zeros_like(flip)
        return torch.stack([x0, y0, w, h], dim=1), flip

    @staticmethod
    def boxes_to_theta(boxes: torch.Tensor, flip: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Affine matrices ``(B, 2, 3)`` mapping output coordinates in [-1, 1] (``align_corners=False``,
        i.e. pixel edges) to the box in input coordinates; a flip negates the x scale."""
        x0, y0, w, h = boxes.unbind(1)
        theta = boxes.new_zeros(boxes.shape[0], 2, 3)
        theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
        theta[:, 0, 2] = (2 * x0 + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * y0 + h) / height - 1
        return theta

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(images.shape)}")
        b, c, h, w = images.shape
        if images.dtype == torch.uint8:
            x = images.float().div_(255.0)
        elif images.is_floating_point():
            x = images
        else:
            raise TypeError(f"expected uint8 or float images, got {images.dtype}")
        boxes, flip = self.sample_boxes(b, h, w, generator)
        theta = self.boxes_to_theta(boxes, flip, h, w).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [b, c, *self.size], align_corners=False)
        # "border" padding: box edges can land a hair outside the image through rounding, and the
        # bilinear taps of edge pixels reach half a pixel out; zeros there would darken the rim.
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"horizontal_flip={self.horizontal_flip})")
