"""From raw images to what an encoder takes: one spec resolution and one preprocessing function, used by
extraction, the probes, fine-tuning and the pictures alike (so every baseline is prepared exactly as a trained
model is).

An encoder's ``input_spec`` (an :class:`~ijepa.spec.InputSpec`: size, channels, mean, std) says what images it
expects; :func:`resolve_input_spec` completes a partial or missing one by the one default rule of
:meth:`InputSpec.default`, and :func:`prepare_images` turns raw images into that input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..spec import InputSpec

__all__ = ["as_nchw", "default_input_spec", "prepare_images", "resolve_input_spec", "to_tensor"]


def default_input_spec(encoder: nn.Module | None = None) -> dict[str, Any]:
    """The spec assumed for an encoder that does not declare one: its ``img_size``/``in_chans`` attributes
    when present (else 224 px RGB) with :meth:`InputSpec.default`'s statistics."""
    spec = InputSpec.default(getattr(encoder, "img_size", 224) or 224, int(getattr(encoder, "in_chans", 3) or 3))
    return _as_dict(spec)


def _as_dict(spec: InputSpec) -> dict[str, Any]:
    return {"image_size": spec.image_size, "in_chans": spec.in_chans, "mean": spec.mean, "std": spec.std}


def resolve_input_spec(encoder: nn.Module | None = None, input_spec: Mapping | None = None) -> dict[str, Any]:
    """Complete a (possibly partial or missing) spec: explicit ``input_spec`` > ``encoder.input_spec`` > the
    default for the encoder's size and channels, key by key. A plain dict (tuples for sizes and statistics)."""
    given = {**dict(getattr(encoder, "input_spec", None) or {}), **dict(input_spec or {})}
    for key in ("mean", "std"):  # NumPy arrays and scalars read as the tuples InputSpec takes
        if key in given and given[key] is not None:
            given[key] = tuple(float(t) for t in np.atleast_1d(np.asarray(given[key], dtype=np.float64)))
    spec = InputSpec.coerce(given, image_size=getattr(encoder, "img_size", 224) or 224,
                            in_chans=int(getattr(encoder, "in_chans", 3) or 3))
    return _as_dict(spec)


def to_tensor(images: Any) -> torch.Tensor:
    """A tensor from a tensor, a PIL image ((C, H, W), uint8) or an array, without copying where it can."""
    if isinstance(images, torch.Tensor):
        return images
    if hasattr(images, "mode") and hasattr(images, "size") and hasattr(images, "convert"):  # PIL image
        if images.mode not in ("L", "RGB"):
            images = images.convert("RGB")
        arr = np.asarray(images)
        t = torch.from_numpy(arr.copy())
        return t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(images))


def as_nchw(images: Any) -> torch.Tensor:
    """Raw images shaped (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3, 4} -> (N, C, H, W), dtype kept."""
    x = to_tensor(images)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    elif x.ndim != 4:
        raise ValueError(f"expected images shaped (N,H,W) or (N,C,H,W), got {tuple(x.shape)}")
    return x


def prepare_images(images: torch.Tensor | np.ndarray, input_spec: dict | None = None, *,
                   normalize: bool = True) -> torch.Tensor:
    """Turn a batch of raw images into the encoder's input (float32, (N, C, H, W), on the input's device).

    ``images``: uint8 (0..255) or float in [0, 1], shaped (N, H, W), (N, C, H, W) or channels-last
    (N, H, W, C) with C in {1, 3, 4}. Images are resized (bicubic, antialiased, clamped back to [0, 1]) to
    ``input_spec["image_size"]`` when different, channels are repeated (grey -> RGB), averaged (RGB ->
    grey) or stripped of alpha to match ``in_chans``, and normalised with the spec's mean/std unless
    ``normalize=False`` (the raw-pixel baseline wants [0, 1] pixels)."""
    spec = resolve_input_spec(None, input_spec)
    x = as_nchw(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    else:
        x = x.float()

    c = spec["in_chans"]
    if x.shape[1] == 4 and c != 4:
        x = x[:, :3]  # alpha carries no content an encoder was trained on
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot map {x.shape[1]}-channel images to an encoder with in_chans={c}")

    size = spec["image_size"]
    if tuple(x.shape[-2:]) != size:
        # antialias matches PIL when shrinking; bicubic overshoots, so clamp back into the pixel range
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)

    if normalize:
        mean = torch.tensor(spec["mean"], dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        std = torch.tensor(spec["std"], dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        x = (x - mean) / std
    return x.contiguous()
