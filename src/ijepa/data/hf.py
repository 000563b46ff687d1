"""Hugging Face ``datasets`` as a source of images (``data.dataset: hf``, ``--dataset hf``).

A dataset is named by a Hub id (``frgfm/imagenette``, with a configuration name such as ``320px``) or a local
folder: one written by ``save_to_disk`` (a ``DatasetDict`` or a single split), or one of parquet or arrow files
(split from the file names as ``datasets`` does: ``train-*.parquet``, ``test/``...; otherwise all of it is
``train``). The images' column is the one with the ``Image`` feature and the labels' the one with the ``ClassLabel``
feature unless named; a dataset without labels reads as unlabelled (label -1).

Images are decoded here, not by ``datasets``: the bytes (or the file a row points to) go through
:func:`~ijepa.data.decode.decode_image`, so the pixel limit, JPEG draft decoding and the policy for unreadable
images are those of the folder readers: an unusable image comes back as ``None`` (``read`` gives an
:class:`~ijepa.data.decode.Unreadable`), warned about once per process and named ``split:index``.

:class:`HFImages` is the map-style dataset (the resumable sampler of :mod:`ijepa.data.loader` orders it, as it does
folders); :mod:`ijepa.data.hf_stream` reads a split as a stream. The ``datasets`` package is imported only when a
dataset is opened (:func:`hf_datasets`), so neither ``ijepa --help`` nor the other kinds need it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError, DatasetNotFoundError
from .datasets import CorruptImageWarning, Sample
from .decode import DEFAULT_MAX_PIXELS, Unreadable, decode_image

__all__ = ["EXTRA", "HFImages", "HFSource", "choose_split", "decode_value", "held_out_split", "hf_datasets", "open_hf",
           "open_hf_source", "require_hf", "split_names"]

EXTRA = "pip install 'ijepa[hf]'"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_TYPES = {".parquet": "parquet", ".arrow": "arrow"}


def hf_datasets() -> Any:
    """The ``datasets`` module, or a one-line :class:`DataError` naming the extra that installs it."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.dataset=hf reads Hugging Face datasets with the datasets package: {EXTRA}") from None
    return datasets


def _saved(p: Path) -> bool:
    """A folder written by ``save_to_disk``: a DatasetDict (``dataset_dict.json``) or one split (``state.json``)."""
    return (p / "dataset_dict.json").is_file() or (p / "state.json").is_file()


def _data_files(p: Path) -> list[Path]:
    return sorted(f for f in p.rglob("*") if f.suffix in _FILE_TYPES and f.is_file())


def require_hf(path: str | os.PathLike | None) -> None:
    """Fail now, in one line, when ``path`` can be neither a local dataset nor a Hub id."""
    if path is None or str(path) == "":
        raise DataError("dataset 'hf' needs a dataset: data.hf_path (--hf-path), a Hub id or a local folder")
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise DatasetNotFoundError(f"hf dataset path {os.fspath(path)!r} is not a directory")
        if not _saved(p) and not _data_files(p):
            raise DatasetNotFoundError(f"{os.fspath(path)!r} holds neither a dataset written by save_to_disk "
                                       "(dataset_dict.json or state.json) nor parquet or arrow files")
        return
    if str(path).startswith(("/", ".", "~")) or not _HUB_ID.match(str(path)):
        raise DatasetNotFoundError(f"hf dataset path {os.fspath(path)!r} does not exist (nor is it a Hub id "
                                   "such as frgfm/imagenette)")


def _where(path: str, name: str | None, split: str) -> str:
    return f"{path}{f' ({name})' if name else ''} split {split}"


def _no_split(path: str, name: str | None, split: str, present: list[str]) -> DataError:
    return DataError(f"{path}{f' ({name})' if name else ''} has no split {split!r} (its splits: "
                     f"{', '.join(present) or 'none'})")


def split_names(path: str | os.PathLike, name: str | None = None) -> list[str]:
    """The splits of the dataset at ``path`` (a local folder or a Hub id), in the dataset's order."""
    ds = hf_datasets()
    p = Path(path).expanduser()
    if p.is_dir() and _saved(p):
        if (p / "dataset_dict.json").is_file():
            return list(ds.load_from_disk(str(p)).keys())
        return [str(ds.load_from_disk(str(p)).split or "train")]
    with _as_data_error(path, name):
        return list(ds.get_dataset_split_names(str(p) if p.is_dir() else str(path), name))


@contextlib.contextmanager
def _as_data_error(path: str | os.PathLike, name: str | None) -> Iterator[None]:
    """What ``datasets`` raises for a dataset it cannot find or read (a Hub id that does not exist, a configuration
    name it does not have, no network), as one :class:`DataError` line naming the dataset."""
    ds = hf_datasets()
    not_found = getattr(getattr(ds, "exceptions", None), "DatasetNotFoundError", OSError)
    errors = (ValueError, FileNotFoundError, ConnectionError, not_found)
    try:
        yield
    except errors as e:
        raise DataError(f"{os.fspath(path)}{f' ({name})' if name else ''}: {type(e).__name__}: {e}") from None


def choose_split(path: str | os.PathLike, name: str | None, split: str | None) -> str:
    """The split a one-split command (``extract``) reads: ``split`` when given, else the dataset's only one; with
    several, a :class:`DataError` asking for one (the output is one split's, and a guess would be silent)."""
    if split is not None:
        return split
    present = split_names(path, name)
    if len(present) == 1:
        return present[0]
    raise DataError(f"{os.fspath(path)!r} has several splits ({', '.join(present)}): say which one to read with "
                    f"--split {'|'.join(present)}")


def held_out_split(path: str | os.PathLike, name: str | None) -> str | None:
    """The split ``eval`` and ``finetune`` test on by default: ``validation``, else ``val``, else ``test``."""
    present = split_names(path, name)
    return next((s for s in ("validation", "val", "test") if s in present), None)


def _load(path: str, name: str | None, split: str, streaming: bool) -> tuple[Any, int | None]:
    """The split as a ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``) and its number of rows where
    known without reading it."""
    ds = hf_datasets()
    p = Path(path).expanduser()
    if p.is_dir() and _saved(p):
        saved = ds.load_from_disk(str(p))
        if isinstance(saved, ds.DatasetDict):
            if split not in saved:
                raise _no_split(path, name, split, list(saved))
            data = saved[split]
        else:  # one split written alone: its own name, or train
            own = str(saved.split or "train")
            if split != own:
                raise _no_split(path, name, split, [own])
            data = saved
        if not streaming:
            return data, len(data)
        # shards (contiguous slices of the arrow files) whose order every epoch reshuffles
        return data.to_iterable_dataset(num_shards=max(1, min(len(data) // 1000, 64))), len(data)
    present = split_names(path, name)
    if split not in present:
        raise _no_split(path, name, split, present)
    with _as_data_error(path, name):
        data = ds.load_dataset(str(p) if p.is_dir() else path, name, split=split, streaming=streaming)
    if not streaming:
        return data, len(data)
    splits = getattr(data.info, "splits", None) or {}
    known = splits.get(split).num_examples if split in splits else None
    return data, known or None


def _columns(features: Any, image_column: str | None, label_column: str | None, where: str
             ) -> tuple[str, str | None, list[str] | None]:
    """The images' column, the labels' column (None: unlabelled) and the class names (None where the labels are
    not a ClassLabel), from ``features`` and the columns named."""
    ds = hf_datasets()
    if features is None:
        if image_column is None:
            raise DataError(f"{where}: its features are unknown until read: name the images' column with "
                            "data.image_column (--image-column)")
        return image_column, label_column, None
    cols = list(features)
    for key, col in (("image_column", image_column), ("label_column", label_column)):
        if col is not None and col not in features:
            raise DataError(f"{where}: no column {col!r} (data.{key}); its columns: {', '.join(cols)}")
    if image_column is None:
        images = [c for c in cols if isinstance(features[c], ds.Image)]
        if not images:
            kinds = ", ".join(f"{c} ({type(features[c]).__name__})" for c in cols)
            raise DataError(f"{where}: no column has the Image feature (its columns: {kinds}): name the images' "
                            "column with data.image_column (--image-column)")
        image_column = images[0]
    if label_column is None:
        label_column = next((c for c in cols if isinstance(features[c], ds.ClassLabel)), None)
    classes = None
    if label_column is not None and isinstance(features[label_column], ds.ClassLabel):
        classes = list(features[label_column].names)
    return image_column, label_column, classes


def _undecoded(data: Any, image_column: str, label_column: str | None) -> Any:
    """Only the columns read, images left as bytes (or paths) for :func:`decode_value`."""
    ds = hf_datasets()
    data = data.select_columns([image_column] + ([label_column] if label_column else []))
    if data.features is not None and isinstance(data.features[image_column], ds.Image):
        data = data.cast_column(image_column, ds.Image(decode=False))
    return data


@dataclass
class HFSource:
    """A split opened and its columns resolved: ``data`` (undecoded images), ``rows`` (None: unknown until read),
    ``where`` (for messages), ``local``: read from local files (not the Hub)."""

    data: Any
    rows: int | None
    image_column: str
    label_column: str | None
    classes: list[str] | None
    split: str
    where: str
    local: bool


def open_hf_source(path: str | os.PathLike, *, split: str = "train", name: str | None = None,
                   image_column: str | None = None, label_column: str | None = None,
                   streaming: bool = False) -> HFSource:
    """The ``split`` of the dataset at ``path`` (Hub id or local folder) opened, its columns checked: a missing split
    or column is one :class:`DataError` line naming those that exist."""
    require_hf(path)
    path = os.fspath(path)
    where = _where(path, name, split)
    data, rows = _load(path, name, split, streaming)
    img, lab, classes = _columns(data.features, image_column, label_column, where)
    return HFSource(_undecoded(data, img, lab), rows, img, lab, classes, split, where, Path(path).expanduser().exists())


def decode_value(value: Any, mode: str, source: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 draft_size: int | None = None) -> Any:
    """One cell of an images' column decoded into PIL ``mode``, or an :class:`Unreadable`: an ``Image`` feature's
    ``{"bytes", "path"}``, raw bytes, a file path, or a PIL image."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = bytes(value), None
    elif isinstance(value, str):
        data, path = None, value
    elif hasattr(value, "convert") and hasattr(value, "size"):  # already a PIL image
        return value.convert(mode)
    else:
        return Unreadable(source, f"not an image: a {type(value).__name__}")
    if data is not None:
        return decode_image(io.BytesIO(data), mode, source=source, max_pixels=max_pixels, draft_size=draft_size)
    if path:
        return decode_image(path, mode, source=source, max_pixels=max_pixels, draft_size=draft_size)
    return Unreadable(source, "no image: neither bytes nor a path")


class HFImages(Dataset):
    """A map-style split of a Hugging Face dataset: items ``(transform(image), label)``, ``None`` for an image that
    cannot be used (:meth:`read` says why). Attributes as the folder datasets': ``root`` (the dataset and split, for
    messages and records), ``classes`` (ClassLabel names, or None), ``targets``; ``source(i)`` is ``split:i``."""

    def __init__(self, src: HFSource, transform: Callable[[Any], Any] | None = None, mode: str = "RGB", *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> None:
        if src.rows is None:
            raise ValueError("HFImages needs a map-style split (streaming=False)")
        self.table, self.image_column, self.label_column = src.data, src.image_column, src.label_column
        self.root, self.split, self.classes = src.where, src.split, src.classes
        self.transform, self.mode = transform, mode
        self.max_pixels, self.draft_size = max_pixels, draft_size
        labels = self.table[self.label_column] if self.label_column else None
        self.targets = [-1 if y is None else int(y) for y in labels] if labels is not None else [-1] * len(self.table)
        self._warned: set[str] = set()  # per process, like the folder readers

    def __len__(self) -> int:
        return len(self.targets)

    def source(self, index: int) -> str:
        return f"{self.split}:{index}"

    def _decode(self, index: int, mode: str, draft_size: int | None) -> Any:
        return decode_value(self.table[int(index)][self.image_column], mode, self.source(index),
                            max_pixels=self.max_pixels, draft_size=draft_size)

    def decode_rgb(self, index: int) -> Any:
        """Image ``index`` in RGB, decoded small, without the transform or a warning (to probe the data)."""
        return self._decode(index, "RGB", 64)

    def read(self, index: int) -> Sample | Unreadable:
        img = self._decode(index, self.mode, self.draft_size)
        if isinstance(img, Unreadable):
            if img.source not in self._warned:
                self._warned.add(img.source)
                warnings.warn(f"Skipping unreadable image {self.root} {img.source}: {img.reason}",
                              CorruptImageWarning, stacklevel=2)
            return img
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __getitem__(self, index: int) -> Sample | None:
        item = self.read(index)
        return None if isinstance(item, Unreadable) else item


def open_hf(path: str | os.PathLike, *, split: str = "train", transform: Callable[[Any], Any] | None = None,
            mode: str = "RGB", max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
            name: str | None = None, image_column: str | None = None, label_column: str | None = None
            ) -> HFImages:
    """:class:`HFImages` of ``split`` of the dataset at ``path`` (see :func:`open_hf_source`)."""
    src = open_hf_source(path, split=split, name=name, image_column=image_column, label_column=label_column)
    return HFImages(src, transform, mode, max_pixels=max_pixels, draft_size=draft_size)
