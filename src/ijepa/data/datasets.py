"""Image datasets returning ``(image, label)``, and a collate function that tolerates corrupt files.

A single unreadable JPEG among a million must not kill a multi-day pretraining run, so
``__getitem__`` of the folder datasets returns ``None`` for such a file instead of raising, and
:func:`collate_skip_corrupt` drops those entries and lists them; the training loop counts them per distinct
file (:class:`~ijepa.data.decode.SkipTally`). ``read(i)`` returns the same item, or an
:class:`~ijepa.data.decode.Unreadable` saying which file and why, and ``source(i)`` names sample ``i``'s file
(relative to the root): what extraction records for every row. Decoding follows :mod:`ijepa.data.decode`
(a pixel limit, JPEG draft decoding).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, default_collate

from ..errors import DatasetNotFoundError
from .decode import DECODE_ERRORS, DEFAULT_MAX_PIXELS, Unreadable, decode_image

logger = logging.getLogger(__name__)

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

_DECODE_ERRORS = DECODE_ERRORS  # the shard reader's name for them

Sample = tuple[Any, int]


class CorruptImageWarning(RuntimeWarning):
    """Emitted (once per file and process) when an image file cannot be decoded and is skipped."""


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


def _scan_images(directory: str, followlinks: bool = True) -> list[str]:
    """All image files under ``directory`` (recursive), sorted so the order is the same on every
    machine and every rank regardless of what order the file system lists them in."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=followlinks):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(found)


def _require_dir(root: str | os.PathLike, what: str) -> str:
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DatasetNotFoundError(f"Image folder {root!r} does not exist (expected {what}).")
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"{root!r} is not a directory (expected {what}).")
    return root


class _FileImageDataset(Dataset):
    """Shared loading for datasets backed by a list of ``(path, label)`` pairs under ``root``.

    ``max_pixels``: images above it are skipped unread (``None``: no limit). ``draft_size``: JPEGs decode at the
    smallest 1/2^k scale keeping both sides at least this (``None``: full size); see :mod:`ijepa.data.decode`."""

    samples: list[tuple[str, int]]
    root: str

    def __init__(self, transform: Callable[[Image.Image], Any] | None = None, mode: str = "RGB", *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> None:
        self.transform = transform
        self.mode = mode
        self.max_pixels = max_pixels
        self.draft_size = draft_size
        # Per process: DataLoader workers each hold a copy, so a bad file may be reported once per
        # worker; the collate count remains the authoritative tally.
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def source(self, index: int) -> str:
        """Sample ``index``'s file, relative to the dataset's root (``/``-separated on every system)."""
        return os.path.relpath(self.samples[index][0], self.root).replace(os.sep, "/")

    def read(self, index: int) -> Sample | Unreadable:
        """``(image, label)``, or an :class:`Unreadable` (with a warning, once per file) if it cannot be used."""
        path, label = self.samples[index]
        img = decode_image(path, self.mode, source=self.source(index), max_pixels=self.max_pixels,
                           draft_size=self.draft_size)
        if isinstance(img, Unreadable):
            if path not in self._warned:
                self._warned.add(path)
                # warnings rather than logging: filterable by category, testable, and routed into
                # logs by logging.captureWarnings() where a run wants that.
                warnings.warn(f"Skipping unreadable image {path}: {img.reason}", CorruptImageWarning, stacklevel=2)
            return img
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __getitem__(self, index: int) -> Sample | None:
        item = self.read(index)
        return None if isinstance(item, Unreadable) else item


class ImageFolderDataset(_FileImageDataset):
    """ImageNet-style folder: ``root/<class>/**/<image>``; labels are indices into sorted class names.

    Attributes: ``classes`` (sorted names), ``class_to_idx``, ``samples`` (``[(path, label)]``,
    sorted by class then path) and ``targets``. A class folder with no images keeps its index, so the
    label mapping of a train and a val split of the same data stay aligned; it is only warned about.
    Images are decoded into PIL mode ``mode`` ("RGB" by default) before ``transform``.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 mode: str = "RGB", **decode: Any) -> None:
        super().__init__(transform, mode, **decode)
        self.root = _require_dir(root, "one sub-folder of images per class")
        with os.scandir(self.root) as it:
            self.classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            hint = (" It holds images directly; use FlatImageFolder for unlabelled images."
                    if _scan_images(self.root) else "")
            raise DatasetNotFoundError(
                f"No class sub-folders in image folder {self.root!r} (expected root/<class>/<image> with "
                f"extensions {', '.join(IMG_EXTENSIONS)}).{hint}")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for c in self.classes:
            files = _scan_images(os.path.join(self.root, c))
            if not files:
                logger.warning("Class folder %s has no images", os.path.join(self.root, c))
            self.samples.extend((f, self.class_to_idx[c]) for f in files)
        if not self.samples:
            raise DatasetNotFoundError(
                f"No images in the class sub-folders of {self.root!r} (expected files with extensions "
                f"{', '.join(IMG_EXTENSIONS)}).")
        self.targets = [label for _, label in self.samples]


class FlatImageFolder(_FileImageDataset):
    """Every image under ``root`` (recursive, sorted), unlabelled: the label is always -1."""

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 mode: str = "RGB", **decode: Any) -> None:
        super().__init__(transform, mode, **decode)
        self.root = _require_dir(root, "a folder containing images")
        self.samples = [(f, -1) for f in _scan_images(self.root)]
        if not self.samples:
            raise DatasetNotFoundError(
                f"No images found under {self.root!r} (searched recursively for extensions "
                f"{', '.join(IMG_EXTENSIONS)}).")


class TensorImageDataset(Dataset):
    """In-memory uint8 images, ``(N, H, W)`` or ``(N, C, H, W)``; items are ``(uint8 (C, H, W), int)``.

    ``labels=None`` labels everything -1. ``transform``, if given, receives the uint8 ``(C, H, W)``
    tensor (e.g. :func:`ijepa.data.transforms.make_pretrain_transform`, which accepts tensors).
    """

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
                 transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        if images_uint8.dtype != torch.uint8:
            raise TypeError(f"TensorImageDataset expects uint8 images, got {images_uint8.dtype}")
        if images_uint8.ndim == 3:
            images_uint8 = images_uint8.unsqueeze(1)
        if images_uint8.ndim != 4:
            raise ValueError(f"expected images of shape (N, H, W) or (N, C, H, W), got "
                             f"{tuple(images_uint8.shape)}")
        n = images_uint8.shape[0]
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.int64)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (n,):
            raise ValueError(f"{n} images but labels of shape {tuple(labels.shape)}")
        self.images = images_uint8
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Sample:
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])


def collate_skip_corrupt(batch: Sequence[Sample | Unreadable | None]
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[Unreadable | None]]:
    """Collate ``(image, label)`` items, dropping ``None`` and :class:`Unreadable` (corrupt) ones.

    Returns ``(images, labels, skipped)``: ``skipped`` lists the dropped items (an :class:`Unreadable` names its
    file; ``None`` names nothing), so ``len(skipped)`` is the count; ``(None, None, skipped)`` when every item
    was corrupt. The batch is therefore smaller than ``batch_size`` whenever something was skipped.
    """
    kept = [item for item in batch if item is not None and not isinstance(item, Unreadable)]
    skipped = [item for item in batch if item is None or isinstance(item, Unreadable)]
    if not kept:
        return None, None, skipped
    # default_collate rather than torch.stack: inside a worker it writes straight into shared
    # memory, saving a copy when the batch is sent to the main process.
    images, labels = default_collate(kept)
    return images, labels, skipped


# ------------------------------------------------------------------------------- provenance through wrappers


def _unwrap(dataset: Any, index: int) -> tuple[Any, int]:
    """The innermost dataset and index behind (possibly nested) ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    return dataset, index


def sample_source(dataset: Any, index: int) -> str | int:
    """What item ``index`` of ``dataset`` is: its file relative to the root for the folder datasets, else the
    index into the underlying in-memory data (through ``Subset`` wrappers)."""
    inner, i = _unwrap(dataset, index)
    return inner.source(i) if hasattr(inner, "source") else i


def read_sample(dataset: Any, index: int) -> Any:
    """Item ``index``, with an :class:`Unreadable` (naming the file, saying why) in place of ``None``."""
    inner, i = _unwrap(dataset, index)
    item = inner.read(i) if hasattr(inner, "read") else dataset[index]
    if item is None:
        return Unreadable(str(sample_source(dataset, index)), "unreadable")
    return item


def dataset_info(dataset: Any) -> dict[str, Any]:
    """``root`` and ``classes`` of the dataset behind any ``Subset`` wrappers (``None`` where it has none)."""
    inner = dataset
    while isinstance(inner, Subset):
        inner = inner.dataset
    classes = getattr(inner, "classes", None)
    root = getattr(inner, "root", None)
    return {"root": None if root is None else os.fspath(root), "classes": None if classes is None else list(classes)}
