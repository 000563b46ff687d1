"""Frozen-feature extraction from any encoder.

An encoder here is any ``nn.Module`` whose ``forward(images)`` returns patch tokens (B, N, D). Its
``input_spec`` says what images it expects; :mod:`ijepa.data.preprocess` turns raw images into that input, so
the random-init and pixel baselines go through exactly the same preprocessing as a trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import dataset_info, read_sample, sample_source
from ..data.decode import Unreadable
from ..data.preprocess import prepare_images, resolve_input_spec, to_tensor
from ..errors import ConfigError
from ..models.vit import inference_forward
from ..precision import resolve_precision
from .feature_file import FeatureSet

__all__ = ["POOLINGS", "extract_feature_set", "extract_features"]

POOLINGS = ("mean", "last4", "tokens")
LAST_LAYERS = 4  # the blocks pooling="last4" concatenates


# ----------------------------------------------------------------------------------------------------------
# extraction
# ----------------------------------------------------------------------------------------------------------

def _encoder_device(encoder: nn.Module) -> torch.device:
    for t in encoder.parameters():
        return t.device
    for t in encoder.buffers():
        return t.device
    return torch.device("cpu")


def _too_few_layers(n: int) -> ConfigError:
    return ConfigError(f"pooling='last4' concatenates the token means of the last {LAST_LAYERS} blocks, but this "
                       f"encoder has {n}; use pooling='mean' (its last block) or 'tokens'")


def _check_pooling(encoder: Any, pooling: str) -> None:
    """Refuse, before any image is read, a pooling the encoder cannot give as named."""
    if pooling != "last4":
        return
    if not hasattr(encoder, "get_intermediate_layers"):
        raise TypeError(f"{type(encoder).__name__} has no get_intermediate_layers(); use pooling='mean'")
    blocks = getattr(encoder, "blocks", None)
    if blocks is not None and len(blocks) < LAST_LAYERS:
        raise _too_few_layers(len(blocks))


def _pool(encoder: nn.Module, x: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "last4":
        layers = inference_forward(encoder, x, last_layers=LAST_LAYERS)
        if len(layers) != LAST_LAYERS:  # an encoder without .blocks: known only from its answer
            raise _too_few_layers(len(layers))
        return torch.cat([t.mean(dim=1) if t.ndim == 3 else t for t in layers], dim=-1)
    out = inference_forward(encoder, x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if pooling == "tokens":
        if out.ndim != 3:
            raise ValueError(f"pooling='tokens' needs (B, N, D) encoder output, got {tuple(out.shape)}")
        return out
    return out.mean(dim=1) if out.ndim == 3 else out  # an already-pooled (B, D) output is kept as is


class _Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor | None
    rows: list | None  # what each image is (a path relative to the root, or an index); None: not known
    skipped: list[dict[str, str]]  # {"source", "reason"} of the inputs of this batch that gave no image
    prepared: bool  # already the encoder's input


class _Indexed(Dataset):
    """``(index, item)`` of a dataset, an :class:`~ijepa.data.decode.Unreadable` in place of an unusable item:
    what lets extraction say which input each row is and why one gave none."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, read_sample(self.dataset, i)


class _PrepareCollate:
    """Collate ``(index, item)`` pairs of ``(image, label)`` items of any image type/size into a :class:`_Batch`:
    unusable items (an ``Unreadable``, or a ``None`` image) are dropped and recorded, each image is brought to
    the encoder's input individually (sizes may differ)."""

    def __init__(self, dataset: Any, spec: dict | None):
        self.dataset, self.spec = dataset, spec

    def __call__(self, pairs: list[tuple[int, Any]]) -> _Batch:
        imgs, labels, rows, skipped = [], [], [], []
        for i, item in pairs:
            img, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
            if isinstance(item, Unreadable) or img is None:
                reason = item.reason if isinstance(item, Unreadable) else "unreadable"
                skipped.append({"source": str(sample_source(self.dataset, i)), "reason": reason})
                continue
            t = to_tensor(img)
            if t.ndim == 2:
                t = t[None]
            if self.spec is not None:
                t = prepare_images(t[None], self.spec)[0]
            imgs.append(t)
            labels.append(label)
            rows.append(sample_source(self.dataset, i))
        y = None if not imgs or any(lb is None for lb in labels) else torch.as_tensor(
            [int(lb) for lb in labels], dtype=torch.long)
        return _Batch(torch.stack(imgs) if imgs else torch.empty(0), y, rows, skipped, self.spec is not None)


def _batches(data: Any, batch_size: int, spec: dict | None) -> tuple[Iterable[_Batch], int | None]:
    """The :class:`_Batch` es of ``data`` and the number of inputs when known."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        n = len(data)

        def gen():
            for i in range(0, n, batch_size):
                yield _Batch(to_tensor(data[i:i + batch_size]), None, list(range(i, min(i + batch_size, n))), [],
                             False)
        return gen(), n
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        loader = DataLoader(_Indexed(data), batch_size=batch_size, shuffle=False,
                            collate_fn=_PrepareCollate(data, spec))
    else:
        raise TypeError(f"cannot extract features from {type(data).__name__}; pass a tensor of images, a "
                        "Dataset or a DataLoader")
    try:
        n = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        n = None

    def gen_loader():
        for batch in loader:
            if isinstance(batch, _Batch):
                yield batch
                continue
            # a caller's DataLoader: its batches as they are, with no word on which input each row is
            if isinstance(batch, (tuple, list)):
                imgs, labels = batch[0], (batch[1] if len(batch) > 1 else None)
            else:
                imgs, labels = batch, None
            if labels is not None and not isinstance(labels, torch.Tensor):
                labels = torch.as_tensor(labels)
            yield _Batch(imgs, labels, None, [], False)
    return gen_loader(), n


def extract_features(encoder: nn.Module | Callable[[torch.Tensor], torch.Tensor],
                     images_or_dataset: torch.Tensor | np.ndarray | Dataset | DataLoader, *,
                     return_labels: bool = False, **kw: Any
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Features of frozen ``encoder`` for every image, as float32 on the CPU, in input order.

    Args:
        encoder: a module (or callable) mapping images (B, C, H, W) to patch tokens (B, N, D).
        images_or_dataset: raw images, a Dataset or a DataLoader, as for ``extract_feature_set``.
        return_labels: also return the labels (None when the input has none).
        **kw: ``extract_feature_set``'s keywords (``pooling``, ``batch_size``, ``device``, ``dtype``, ...).

    Returns:
        The ``features`` of ``extract_feature_set``, or ``(features, labels)`` with ``return_labels``.
    """
    fs = extract_feature_set(encoder, images_or_dataset, **kw)
    return (fs.features, fs.labels) if return_labels else fs.features


def extract_feature_set(encoder: nn.Module | Callable[[torch.Tensor], torch.Tensor],
                        images_or_dataset: torch.Tensor | np.ndarray | Dataset | DataLoader, *,
                        pooling: str = "mean", batch_size: int = 256, device: torch.device | str | None = None,
                        dtype: str = "auto", progress: bool = True, prepare: bool = True,
                        input_spec: dict | None = None) -> FeatureSet:
    """Features of frozen ``encoder`` for every image, and what each row is (a ``FeatureSet``, which
    ``save_features`` writes and ``load_features`` reads back).

    The encoder is put in eval mode for the extraction and its previous mode restored afterwards.

    Args:
        encoder: a module (or callable) mapping images (B, C, H, W) to patch tokens (B, N, D).
        images_or_dataset: raw images (see ``ijepa.data.preprocess.prepare_images``; row ``i`` is image ``i``),
            or a Dataset / DataLoader yielding ``(image, label)``. A Dataset's items may be PIL images, arrays or
            tensors of any size; an unusable item (``None``, or an unreadable file) gives no row and is listed in
            ``skipped`` with the reason, and ``rows`` says which input every row is (a file relative to the
            dataset's root, or an index). A DataLoader's batches are used as given (``rows`` is then ``None``).
        pooling: ``"mean"`` — average of the last layer's patch tokens, (N, D) (the I-JEPA paper's linear probe
            input); ``"last4"`` — concatenated token averages of the last 4 layers, (N, 4D); ``"tokens"`` — all
            patch tokens, (N, T, D), for the attentive probe.
        batch_size: images per forward pass.
        device: where images are sent, by default the encoder's own device (the encoder is not moved).
        dtype: ``auto | bf16 | fp16 | fp32``, resolved by the one precision policy
            (``ijepa.precision.resolve_precision``: ``auto`` is bf16 where the device runs it natively, fp16 on
            CUDA GPUs without bf16, fp32 elsewhere); ``"fp32"`` gives batch-size-independent results.
        progress: show a progress bar.
        prepare: resize and normalise images as ``input_spec`` says (``False`` when a DataLoader's transform
            already normalises).
        input_spec: overrides the encoder's ``input_spec``.

    Returns:
        FeatureSet: features, labels, rows, classes, skipped inputs and how the features were made.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    _check_pooling(encoder, pooling)
    dev = torch.device(device) if device is not None else (
        _encoder_device(encoder) if isinstance(encoder, nn.Module) else torch.device("cpu"))
    precision = resolve_precision(dtype, dev)
    spec = resolve_input_spec(encoder, input_spec) if prepare else None
    batches, total = _batches(images_or_dataset, batch_size, spec)

    from tqdm.auto import tqdm  # imported here so that importing ijepa.eval stays light

    was_training = encoder.training if isinstance(encoder, nn.Module) else None
    if isinstance(encoder, nn.Module):
        encoder.eval()  # dropout / drop-path off: features must not depend on the batch or on chance
    acc = _Accumulator(total)
    try:
        with tqdm(total=total, disable=not progress, unit="img", desc=f"features ({pooling})",
                  dynamic_ncols=True) as bar:
            for b in batches:
                acc.skipped += b.skipped
                bar.update(len(b.skipped))
                if b.images.numel() == 0:
                    continue
                imgs = b.images.to(dev, non_blocking=True)
                # Preprocess on the target device: the uint8 batch is 4x smaller to move than the floats.
                x = prepare_images(imgs, spec) if (spec is not None and not b.prepared) else imgs.float()
                with torch.inference_mode(), precision.autocast():
                    f = _pool(encoder, x, pooling)
                acc.add(f.float(), b)  # copied (outside inference mode) into tensors autograd can use later
                bar.update(len(x))
    finally:
        if was_training:
            encoder.train()
    out = acc.features()
    info = dataset_info(images_or_dataset) if isinstance(images_or_dataset, Dataset) else {}
    meta = {"source": getattr(encoder, "source", None) or type(encoder).__name__, "pooling": pooling,
            "input_spec": spec if spec is not None else getattr(encoder, "input_spec", None),
            "root": info.get("root"), "inputs": total, "dtype": dtype}
    return FeatureSet(out, torch.cat(acc.labels) if acc.labels else None, rows=acc.rows,
                      classes=info.get("classes"), skipped=acc.skipped, meta=meta)


class _Accumulator:
    """The rows of an extraction as batches arrive: features filled in place once the image count is known (all-
    token features can be gigabytes, and concatenating a list of batches would need twice that at the end),
    labels and row names while every batch has them."""

    def __init__(self, total: int | None):
        self.total, self.out, self.n_out = total, None, 0
        self.feats: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] | None = []
        self.rows: list | None = []
        self.skipped: list[dict[str, str]] = []

    def add(self, f: torch.Tensor, b) -> None:
        if self.total is not None and self.out is None:
            self.out = torch.empty((self.total, *f.shape[1:]), dtype=torch.float32)
        if self.out is not None and not self.feats and self.n_out + len(f) <= len(self.out):
            self.out[self.n_out:self.n_out + len(f)] = f.cpu()
            self.n_out += len(f)
        else:
            self.feats.append(f.cpu().clone())
        if b.labels is None:
            self.labels = None
        elif self.labels is not None:
            self.labels.append(b.labels.reshape(-1).long().cpu())
        if b.rows is None:
            self.rows = None
        elif self.rows is not None:
            self.rows.extend(b.rows)

    def features(self) -> torch.Tensor:
        if self.out is None and not self.feats:
            first = self.skipped[0] if self.skipped else None
            raise ValueError("no images to extract features from" + (
                f" ({len(self.skipped)} skipped: {first['source']}: {first['reason']}, ...)" if first else ""))
        if self.out is None:
            return torch.cat(self.feats)
        out = self.out[:self.n_out].clone() if self.n_out < len(self.out) else self.out  # corrupt images dropped
        return torch.cat([out, *self.feats]) if self.feats else out  # a loader yielded more than len() promised
