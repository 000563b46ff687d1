"""Where images come from: one factory that every command (train, eval, extract, finetune, the pictures) asks
for a dataset by kind and root.

Kinds (``data.dataset`` in a config, ``--dataset`` on the command line):

- ``fashion_mnist``: the IDX files under ``root`` (default ``/usr/share/datasets/fashion-mnist`` or
  ``$IJEPA_FASHION_MNIST``), read whole into memory as :class:`TensorImages`: batches are cut from tensors with
  no per-image Python work.
- ``imagefolder``: class sub-folders (ImageNet layout); ``split`` picks ``root/<split>`` when it exists.
- ``folder``: every image under ``root``, unlabelled.
- ``shards``: tar shards written by ``ijepa shards``, streamed.

The three file-backed kinds give torch datasets of ``(image, label)`` whose unreadable files come back as
``None`` (skipped, counted and named by the readers). :func:`require` checks a root before anything else is
built, so a wrong path is one line at start-up, never a failure after the model is on the device.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError, DatasetNotFoundError
from ..spec import InputSpec
from .datasets import FlatImageFolder, ImageFolderDataset
from .decode import DEFAULT_MAX_PIXELS
from .fashion_mnist import CLASSES as FMNIST_CLASSES
from .fashion_mnist import DEFAULT_ROOT as FMNIST_ROOT
from .fashion_mnist import MEAN as FMNIST_MEAN
from .fashion_mnist import STD as FMNIST_STD
from .fashion_mnist import load_fashion_mnist
from .shards.reader import ShardDataset

DATASETS = ("fashion_mnist", "imagefolder", "folder", "shards")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class TensorImages:
    """A labelled image set held in memory: uint8 ``images`` (N, H, W) or (N, C, H, W), int64 ``labels``,
    ``classes[label]`` names a label; row i is index i of the source (what provenance records)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return len(self.images)

    def first(self, n: int | None) -> TensorImages:
        """The first ``n`` images (all of them for ``None`` or 0)."""
        if not n:
            return self
        return TensorImages(self.images[:n], self.labels[:n], self.classes, self.name)


def mode_for(in_chans: int) -> str:
    """The PIL mode images are decoded into for an encoder with ``in_chans`` channels."""
    return "RGB" if int(in_chans) == 3 else "L"


def normalisation(kind: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) to train on ``kind`` with when the config gives none: Fashion-MNIST's own statistics for it,
    else :meth:`InputSpec.default`'s rule (ImageNet statistics for 3 channels, 0.5 / 0.5 otherwise)."""
    c = int(in_chans)
    if kind == "fashion_mnist":
        return FMNIST_MEAN * c, FMNIST_STD * c
    spec = InputSpec.default(224, c)
    return spec.mean, spec.std


def _check_kind(kind: str) -> None:
    if kind not in DATASETS:
        raise DataError(f"unknown dataset {kind!r} (choose from {', '.join(DATASETS)})")


def split_root(kind: str, root: str | os.PathLike, split: str | None) -> Path:
    """The folder a split of ``kind`` lives in: ``root/<split>`` for an image folder that has one, else ``root``."""
    root = Path(root)
    if kind == "imagefolder" and split and (root / split).is_dir():
        return root / split
    return root


def require(kind: str, root: str | os.PathLike | None) -> None:
    """Fail now, in one line naming the path, if ``kind``'s data cannot be at ``root``."""
    _check_kind(kind)
    if kind == "fashion_mnist":
        folder = Path(root or os.environ.get("IJEPA_FASHION_MNIST", FMNIST_ROOT))
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"Fashion-MNIST folder {str(folder)!r} does not exist. Install it with `apt-get update && "
                f"apt-get install -y dataset-fashion-mnist` (files go to {FMNIST_ROOT}), or pass the folder "
                "holding the IDX files.")
        return
    if root is None:
        raise DataError(f"dataset {kind!r} needs a root folder")
    if not Path(root).exists() and not (kind == "shards" and glob.glob(os.fspath(root))):  # shards: a glob too
        raise DatasetNotFoundError(f"{kind} dataset path {os.fspath(root)!r} does not exist")
    if not Path(root).is_dir() and kind != "shards":  # shards may be given as a glob or a single tar
        raise DatasetNotFoundError(f"{kind} dataset path {os.fspath(root)!r} is not a directory")


def first(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items of a map-style dataset (all of them for ``None`` or 0), provenance kept."""
    if not n:
        return dataset
    return Subset(dataset, range(min(int(n), len(dataset))))


def open_images(kind: str, root: str | os.PathLike | None = None, *, split: str | None = "train",
                transform: Callable[[Any], Any] | None = None, mode: str = "RGB", limit: int | None = None,
                draft_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                **shard_options: Any) -> TensorImages | Dataset:
    """The ``split`` of dataset ``kind`` at ``root`` (``None``: ``root`` itself, a folder that is one split):
    :class:`TensorImages` for Fashion-MNIST (``transform`` unused: in-memory paths prepare whole batches), else a
    dataset of ``(transform(image), label)``.

    ``limit``: the first N images. ``draft_size``: JPEGs decode at the smallest scale keeping both sides at least
    this. ``max_pixels``: larger images in a folder are skipped unread (None: no limit). ``shard_options`` go to
    :class:`~ijepa.data.shards.reader.ShardDataset` (rank, world_size, seed, shuffle, name_skipped)."""
    _check_kind(kind)
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    if kind == "fashion_mnist":
        if split is None:
            raise DataError("Fashion-MNIST has two splits: give split='train' or 'test'")
        images, labels = load_fashion_mnist(root, train=split == "train")
        return TensorImages(images, labels, FMNIST_CLASSES, "fashion_mnist").first(limit)
    require(kind, root)
    if kind == "shards":
        return ShardDataset(root, transform, mode=mode, limit=limit, **shard_options)
    if shard_options:
        raise TypeError(f"options {sorted(shard_options)} apply to shards only")
    folder = split_root(kind, root, split)
    cls = ImageFolderDataset if kind == "imagefolder" else FlatImageFolder
    return first(cls(folder, transform, mode=mode, draft_size=draft_size, max_pixels=max_pixels), limit)


__all__ = ["DATASETS", "TensorImages", "first", "mode_for", "normalisation", "open_images", "require",
           "split_root"]

