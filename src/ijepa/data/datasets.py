"""Image datasets returning ``(image, label)``, and a collate function that tolerates corrupt files.

A single unreadable JPEG among a million must not kill a multi-day pretraining run, so
``__getitem__`` of the folder datasets returns ``None`` for such a file instead of raising, and
:func:`collate_skip_corrupt` drops those entries and lists them; the training loop counts them per distinct
file (:class:`~ijepa.data.decode.SkipTally`). ``read(i)`` returns the same item, or an
:class:`~ijepa.data.decode.Unreadable` saying which file and why, and ``source(i)`` names sample ``i``'s file
(relative to the root): what extraction records for every row. Decoding follows :mod:`ijepa.data.decode`
(a pixel limit, JPEG draft decoding). Folders are walked by :class:`_Walk`: links to directories only when asked,
each real directory once.
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

from ..errors import DataError, DatasetNotFoundError
from .decode import DEFAULT_MAX_PIXELS, Unreadable, decode_image
from .layout import SPLITS

logger = logging.getLogger(__name__)

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

Sample = tuple[Any, int]


class CorruptImageWarning(RuntimeWarning):
    """Emitted (once per file and process) when an image file cannot be decoded and is skipped."""


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


class _Walk:
    """The image files under one dataset's folders, each real directory entered at most once.

    Links to image files are read like files. Links to directories are followed only with ``follow_symlinks``,
    and even then never into a directory of the tree itself (its images are read where they really are, under
    their own class) nor into one already entered: a ``..`` link or two links pointing at each other cannot
    multiply the samples or make the walk endless. Directories are told apart by ``(st_dev, st_ino)``, so a
    bind mount or a second path to the same place is recognised too."""

    def __init__(self, root: str, follow_symlinks: bool = False) -> None:
        self.follow = follow_symlinks
        self.seen: set[tuple[int, int]] = set()
        self.links: list[str] = []  # directory links met and not followed
        self.inside: set[tuple[int, int]] = set()
        if follow_symlinks:  # the tree's own real directories: a link to one of them is not followed
            probe = _Walk(root)
            probe.images(root)
            self.inside = probe.seen

    @staticmethod
    def _key(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:  # a dangling link, or a directory removed meanwhile
            return None
        return st.st_dev, st.st_ino

    def may_follow(self, link: str) -> bool:
        """Whether the directory link ``link`` would be followed (it is remembered when it is not)."""
        key = self._key(link)
        if key is None or not self.follow or key in self.inside or key in self.seen:
            self.links.append(link)
            return False
        return True

    def enter_root(self, root: str) -> None:
        """Mark ``root`` as entered without listing it (a class folder's ``..`` link then leads nowhere new)."""
        key = self._key(root)
        if key is not None:
            self.seen.add(key)

    def _enter(self, path: str, is_link: bool) -> bool:
        if is_link and not self.may_follow(path):
            return False
        key = self._key(path)
        if key is None or key in self.seen:
            return False
        self.seen.add(key)
        return True

    def images(self, top: str, is_link: bool = False) -> list[str]:
        """Every image file under ``top``, sorted so the order is the same on every machine and every rank
        whatever order the file system lists them in. ``top`` itself is read even when it is a link (the root
        a user names) unless ``is_link`` says it was found as one."""
        found: list[str] = []
        stack = [(top, is_link)]
        while stack:
            folder, link = stack.pop()
            if not self._enter(folder, link):
                continue
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                logger.warning("Cannot list %s (%s: %s); its images are left out", folder, type(e).__name__, e)
                continue
            below = []
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        below.append((e.path, False))
                    elif e.is_symlink() and e.is_dir():
                        below.append((e.path, True))
                    elif is_image_file(e.name):
                        found.append(e.path)
                except OSError:
                    continue
            # depth first in name order: which of two links to one directory is followed is the same on every
            # machine and rank, so every rank lists the same samples
            stack.extend(reversed(below))
        return sorted(found)

    def outside_links(self) -> list[str]:
        """The directory links not followed that lead out of the tree (what ``follow_symlinks`` would add)."""
        keys = self.seen | self.inside
        return [p for p in self.links if (k := self._key(p)) is not None and k not in keys]

    def note(self, root: str) -> str:
        """A sentence for messages about ``root`` when links to directories outside it were not followed."""
        if self.follow:
            return ""
        links = self.outside_links()
        if not links:
            return ""
        return (f" {len(links)} link(s) to directories outside it were not followed (e.g. "
                f"{os.path.relpath(links[0], root)}): follow_symlinks (data.follow_symlinks=true, "
                f"--follow-symlinks) reads them.")


def _scan_images(directory: str, follow_symlinks: bool = False) -> list[str]:
    """All image files under ``directory`` (recursive, sorted; see :class:`_Walk` for links)."""
    return _Walk(directory, follow_symlinks).images(directory)


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

    def _warn_links(self, walk: _Walk) -> None:
        note = walk.note(self.root)
        if note:
            logger.warning("%s:%s", self.root, note)

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
    Images are decoded into PIL mode ``mode`` ("RGB" by default) before ``transform``. A folder whose
    sub-folders include ``train``, ``val`` or ``test`` holds splits, not classes: it is refused (read one split,
    ``root/<split>``; :func:`ijepa.data.sources.open_images` does). ``follow_symlinks``: see :class:`_Walk`.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 mode: str = "RGB", *, follow_symlinks: bool = False, **decode: Any) -> None:
        super().__init__(transform, mode, **decode)
        self.root = _require_dir(root, "one sub-folder of images per class")
        walk = _Walk(self.root, follow_symlinks)
        walk.enter_root(self.root)
        classes = _class_folders(self.root, walk)
        splits = sorted(set(classes) & set(SPLITS))
        if splits:
            raise DataError(
                f"{self.root!r} holds split folders ({', '.join(splits)}), not classes: read one split at a time "
                f"(name it with --split, or give {os.path.join(self.root, splits[0])!r} as the root)")
        self.classes = sorted(classes)
        if not self.classes:
            hint = (" It holds images directly; the kind 'folder' (FlatImageFolder) reads unlabelled images."
                    if _scan_images(self.root) else "")
            raise DatasetNotFoundError(
                f"No class sub-folders in image folder {self.root!r} (expected root/<class>/<image> with "
                f"extensions {', '.join(IMG_EXTENSIONS)}).{hint}{walk.note(self.root)}")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for c in self.classes:
            folder = os.path.join(self.root, c)
            files = walk.images(folder, is_link=classes[c])
            if not files:
                logger.warning("Class folder %s has no images", folder)
            self.samples.extend((f, self.class_to_idx[c]) for f in files)
        if not self.samples:
            raise DatasetNotFoundError(
                f"No images in the class sub-folders of {self.root!r} (expected files with extensions "
                f"{', '.join(IMG_EXTENSIONS)}).{walk.note(self.root)}")
        self.targets = [label for _, label in self.samples]
        self._warn_links(walk)


class FlatImageFolder(_FileImageDataset):
    """Every image under ``root`` (recursive, sorted), unlabelled: the label is always -1.
    ``follow_symlinks``: see :class:`_Walk`."""

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 mode: str = "RGB", *, follow_symlinks: bool = False, **decode: Any) -> None:
        super().__init__(transform, mode, **decode)
        self.root = _require_dir(root, "a folder containing images")
        walk = _Walk(self.root, follow_symlinks)
        self.samples = [(f, -1) for f in walk.images(self.root)]
        if not self.samples:
            raise DatasetNotFoundError(
                f"No images found under {self.root!r} (searched recursively for extensions "
                f"{', '.join(IMG_EXTENSIONS)}).{walk.note(self.root)}")
        self._warn_links(walk)


def _class_folders(root: str, walk: _Walk) -> dict[str, bool]:
    """``{name: is a link}`` of ``root``'s class folders: its sub-folders not starting with a dot, and links to
    directories where ``walk`` follows them (not into the tree itself: see :class:`_Walk`)."""
    out = {}
    with os.scandir(root) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                out[e.name] = False
            elif e.is_symlink() and e.is_dir() and walk.may_follow(e.path):
                out[e.name] = True
    return out


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


def innermost(dataset: Any) -> Any:
    """The dataset behind any (nested) ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def dataset_info(dataset: Any) -> dict[str, Any]:
    """``root`` and ``classes`` of the dataset behind any ``Subset`` wrappers (``None`` where it has none)."""
    inner = innermost(dataset)
    classes = getattr(inner, "classes", None)
    root = getattr(inner, "root", None)
    return {"root": None if root is None else os.fspath(root), "classes": None if classes is None else list(classes)}
