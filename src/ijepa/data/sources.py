"""Where images come from: one factory that every command (train, eval, extract, finetune, the pictures) asks
for a dataset by kind and root.

Kinds (``data.dataset`` in a config, ``--dataset`` on the command line):

- ``fashion_mnist``: the IDX files under ``root`` (default ``/usr/share/datasets/fashion-mnist`` or
  ``$IJEPA_FASHION_MNIST``), read whole into memory as :class:`TensorImages`: batches are cut from tensors with
  no per-image Python work.
- ``imagefolder``: class sub-folders (ImageNet layout), labelled by class.
- ``folder``: every image under ``root``, unlabelled.
- ``shards``: tar shards written by ``ijepa shards``, streamed.
- ``hf``: a Hugging Face dataset, a Hub id or a local folder (:mod:`ijepa.data.hf`): ``root`` is its path, ``split``
  one of its own splits (``train``, ``validation``...).

For the two folder kinds, ``split`` picks ``root/train``, ``root/val`` or ``root/test`` where the root has split
folders (:func:`split_root`; the convention every command follows is :mod:`ijepa.data.layout`).
:func:`probe_images` looks at the first images before anything else is built: enough of them for a batch, at
least one readable, colour or grey.

The three file-backed kinds give torch datasets of ``(image, label)`` whose unreadable files come back as
``None`` (skipped, counted and named by the readers). :func:`require` checks a root before anything else is
built, so a wrong path is one line at start-up, never a failure after the model is on the device.
"""

from __future__ import annotations

import copy
import glob
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError, DatasetNotFoundError
from ..spec import InputSpec
from .datasets import FlatImageFolder, ImageFolderDataset, _unwrap, innermost
from .decode import DEFAULT_MAX_PIXELS, Unreadable, decode_image
from .fashion_mnist import CLASSES as FMNIST_CLASSES
from .fashion_mnist import DEFAULT_ROOT as FMNIST_ROOT
from .fashion_mnist import MEAN as FMNIST_MEAN
from .fashion_mnist import STD as FMNIST_STD
from .fashion_mnist import load_fashion_mnist
from .hf import open_hf, require_hf
from .layout import SPLITS
from .shards.reader import ShardDataset
from .shards.remote import URL, location

DATASETS = ("fashion_mnist", "imagefolder", "folder", "shards", "hf")


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


def split_folders(root: str | os.PathLike) -> list[str]:
    """The split folders (``train``, ``val``, ``test``) under ``root``, in that order; [] for a root that is one
    split."""
    return [s for s in SPLITS if (Path(root) / s).is_dir()]


def split_root(kind: str, root: str | os.PathLike, split: str | None) -> Path:
    """The folder a split of ``kind`` lives in (:mod:`ijepa.data.layout`): ``root/<split>`` for a folder with split
    folders, ``root`` itself for ``split=None`` or for a root without split folders asked for ``train`` (such a
    root is one split: what ``train`` reads). Any other split missing is a one-line :class:`DataError`."""
    root = Path(root)
    if kind not in ("imagefolder", "folder") or split is None:
        return root
    present = split_folders(root)
    if split in present:
        return root / split
    if not present and split == "train":
        return root
    has = f"its split folders are {', '.join(present)}" if present else "it has no split folders: it is one split"
    raise DataError(f"no {split}/ folder under {str(root)!r} ({has})")


def held_out_split(root: str | os.PathLike) -> str | None:
    """The split ``eval`` and ``finetune`` test on: ``val`` where ``root/val`` exists, else ``test``, else None."""
    present = split_folders(root)
    return next((s for s in ("val", "test") if s in present), None)


def choose_split(kind: str, root: str | os.PathLike, split: str | None) -> str | None:
    """The split a one-split command (``extract``, ``shards``) reads: ``split`` when given; None (the whole root)
    for a root without split folders; and for a root with split folders and no ``split``, a :class:`DataError`
    asking for one: the output is one split's, and a guess would be silent."""
    if split is not None or kind not in ("imagefolder", "folder"):
        return split
    present = split_folders(root)
    if present:
        raise DataError(f"{os.fspath(root)!r} has split folders ({', '.join(present)}): say which one to read with "
                        f"--split {'|'.join(present)}")
    return None


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
    if kind == "hf":
        require_hf(root)
        return
    if root is None:
        raise DataError(f"dataset {kind!r} needs a root folder")
    if kind == "shards":
        root = location(root)  # a file:// URL is a local path
        if isinstance(root, URL):  # in an object store: reading its index.json says what is missing, in one line
            return
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
                follow_symlinks: bool = False, **shard_options: Any) -> TensorImages | Dataset:
    """The ``split`` of dataset ``kind`` at ``root`` (``None``: ``root`` itself, a folder that is one split; see
    :func:`split_root`): :class:`TensorImages` for Fashion-MNIST (``transform`` unused: in-memory paths prepare
    whole batches), else a dataset of ``(transform(image), label)``.

    ``limit``: the first N images. ``draft_size``: JPEGs decode at the smallest scale keeping both sides at least
    this. ``max_pixels``: larger images are skipped unread (None: no limit). ``follow_symlinks``: folders reached
    through links to directories are read too (each real directory once). ``shard_options`` go to
    :class:`~ijepa.data.shards.reader.ShardDataset` (rank, world_size, seed, shuffle, name_skipped), or for ``hf``
    to :func:`~ijepa.data.hf.open_hf` (name, image_column, label_column)."""
    _check_kind(kind)
    if kind == "hf":  # its splits are its own (train, validation, ...); shard_options: name, image/label_column
        return first(open_hf(root, split=split or "train", transform=transform, mode=mode, max_pixels=max_pixels,
                             draft_size=draft_size, **shard_options), limit)
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    if kind == "fashion_mnist":
        if split not in ("train", "test"):
            raise DataError(f"Fashion-MNIST has two splits, train and test; got {split!r}")
        images, labels = load_fashion_mnist(root, train=split == "train")
        return TensorImages(images, labels, FMNIST_CLASSES, "fashion_mnist").first(limit)
    require(kind, root)
    if kind == "shards":
        return ShardDataset(root, transform, mode=mode, limit=limit, max_pixels=max_pixels, **shard_options)
    if shard_options:
        raise TypeError(f"options {sorted(shard_options)} apply to shards only")
    folder = split_root(kind, root, split)
    cls = ImageFolderDataset if kind == "imagefolder" else FlatImageFolder
    ds = cls(folder, transform, mode=mode, draft_size=draft_size, max_pixels=max_pixels,
             follow_symlinks=follow_symlinks)
    return first(ds, limit)


def set_decoding(dataset: Dataset, transform: Callable[[Any], Any] | None, mode: str) -> None:
    """Give a folder or shard dataset (behind any ``Subset``) its ``transform`` and PIL ``mode`` once the model that
    decides them is loaded: the data is opened and checked first, so a bad folder never waits for a model."""
    inner = innermost(dataset)
    inner.transform, inner.mode = transform, mode


@dataclass(frozen=True)
class Probe:
    """What the first images of a dataset are: ``total`` samples, ``tried`` of them decoded, ``readable`` of
    those, whether any is in ``colour``, and the first ``problem`` (``file: reason``) met."""

    total: int
    tried: int
    readable: int
    colour: bool
    problem: str | None


def _is_colour(img: Any) -> bool:
    """An RGB image whose channels differ (JPEG's rounding aside): a grey image stored as RGB is not colour."""
    from PIL import ImageChops

    r, g, b = img.split()
    return any(ImageChops.difference(x, y).getextrema()[1] > 8 for x, y in ((r, g), (g, b)))


def _decoded(dataset: Any) -> Iterator[Any]:
    """An RGB image (decoded small) or an :class:`Unreadable` for each image of ``dataset`` in order, without the
    dataset's transform or its warnings (the training run warns about each file itself)."""
    inner = innermost(dataset)
    if isinstance(inner, ShardDataset):
        probe = copy.copy(inner)
        probe.transform, probe.mode, probe.shuffle, probe.name_skipped = None, "RGB", False, True
        probe.rank, probe.world_size, probe.batch_size, probe.start, probe._warned = 0, 1, None, 0, set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for item in probe:
                yield item if isinstance(item, Unreadable) else item[0]
        return
    if hasattr(inner, "decode_rgb"):  # a Hugging Face split (data/hf.py)
        for i in range(len(dataset)):
            yield inner.decode_rgb(_unwrap(dataset, i)[1])
        return
    for i in range(len(dataset)):
        path = inner.samples[_unwrap(dataset, i)[1]][0]
        yield decode_image(path, "RGB", max_pixels=inner.max_pixels, draft_size=64)


def _count(dataset: Any) -> int:
    """Samples in the whole dataset (a shard dataset's ``len`` is one rank's share)."""
    inner = innermost(dataset)
    return inner.num_samples if isinstance(inner, ShardDataset) else len(dataset)


def probe_images(dataset: Dataset, n: int = 16) -> Probe:
    """Decode the first images of a folder or shard dataset (``Subset`` wrappers allowed) until ``n`` are readable
    or all were tried: whether it can be used at all, and whether its images are in colour."""
    total = _count(dataset)
    tried = readable = 0
    colour, problem = False, None
    for img in _decoded(dataset):
        tried += 1
        if isinstance(img, Unreadable):
            problem = problem or f"{img.source}: {img.reason}"
            continue
        readable += 1
        colour = colour or _is_colour(img)
        if readable >= n:
            break
    return Probe(total, tried, readable, colour, problem)


def require_images(dataset: Dataset, where: str | os.PathLike, *, at_least: int = 1, why: str = "") -> Probe:
    """:func:`probe_images`, failing in one line naming ``where`` when the dataset has fewer than ``at_least``
    samples (``why`` says what needs them) or none of them can be read."""
    where = os.fspath(where)
    total = _count(dataset)
    if total < at_least:
        raise DataError(f"{where}: {total} image{' is' if total == 1 else 's are'} fewer than {why or at_least}")
    probe = probe_images(dataset)
    if probe.readable == 0:
        raise DataError(f"{where}: none of its {probe.total} images can be read (first: {probe.problem})")
    return probe


__all__ = ["DATASETS", "Probe", "TensorImages", "choose_split", "first", "held_out_split", "mode_for", "normalisation",
           "open_images", "probe_images", "require", "require_images", "set_decoding", "split_folders", "split_root"]

