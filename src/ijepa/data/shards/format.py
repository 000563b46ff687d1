"""The on-disk format of tar shards (described in :mod:`ijepa.data.shards`): file names, the errors and warnings
of a missing or damaged set, how tar members group into samples, and reading ``index.json`` back.

Shared by the writer (:mod:`.writer`), the reader (:mod:`.reader`) and the object-store side (:mod:`.remote`).
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DatasetNotFoundError
from ..datasets import IMG_EXTENSIONS

__all__ = ["CLASSES_NAME", "INDEX_NAME", "ShardInfo", "ShardReadWarning", "ShardsNotFoundError", "check_present",
           "parse_index", "read_index"]

INDEX_NAME = "index.json"
CLASSES_NAME = "classes.json"
INDEX_FORMAT = "ijepa-shards"
INDEX_VERSION = 1

_IMG_EXTS = frozenset(e.lstrip(".") for e in IMG_EXTENSIONS)
_HOW_TO_CREATE = ("create them from an image folder with `ijepa shards SRC DST` "
                  "(or ijepa.data.shards.writer.write_shards(SRC, DST))")


class ShardsNotFoundError(DatasetNotFoundError):
    """No shards where they were expected, no index.json beside them, or a shard the index lists is gone
    (the user's to fix, not a bug: the CLI prints it as one line; also a ``FileNotFoundError``)."""


class ShardReadWarning(RuntimeWarning):
    """A shard is truncated, replaced or unreadable: its unreadable samples are yielded as ``None``."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its file (a :class:`~.remote.URL` for a shard in an object store), its name in index.json, and how
    many samples index.json says it holds."""

    path: Path
    name: str
    count: int
    nbytes: int | None = None


# ----------------------------------------------------------------------------------------------------------
# tar members <-> samples
# ----------------------------------------------------------------------------------------------------------

def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the member path up to the first dot of its file name, the extension the
    rest (lower-cased here, so ``.JPEG`` from other writers is recognised)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _iter_samples(tar: tarfile.TarFile, wanted: Callable[[int], bool], stop: int | None = None
                  ) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """``(sample index in the shard, key, {ext: bytes})`` for each wanted sample, in tar order.

    Only the image and ``cls`` members of wanted samples are read; on a seekable file (local, or an object store
    read by ranges) every other member costs one header read, on a stream (``http(s)://``) its bytes are read past.
    Stops at sample ``stop`` without reading further."""
    j, key, files, take = -1, None, {}, False
    while True:
        m = tar.next()
        if m is None:
            break
        if not m.isfile():
            continue
        k, ext = _split_key(m.name)
        if k != key:
            if take:
                yield j, key, files
            j, key, files = j + 1, k, {}
            if stop is not None and j >= stop:
                return
            take = wanted(j)
        if take and (ext == "cls" or ext in _IMG_EXTS) and ext not in files:
            f = tar.extractfile(m)
            files[ext] = f.read() if f is not None else b""
    if take:
        yield j, key, files


def _count_samples(path: Path) -> int:
    with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        return _count_keys(tar)


def _count_keys(tar: tarfile.TarFile) -> int:
    """Samples (runs of members sharing a key) in ``tar``, from its headers alone."""
    n, key = 0, None
    while (m := tar.next()) is not None:
        if m.isfile():
            k, _ = _split_key(m.name)
            if k != key:
                n, key = n + 1, k
    return n


def _image_ext(files: dict[str, bytes]) -> str | None:
    return next((e for e in files if e in _IMG_EXTS), None)




# ----------------------------------------------------------------------------------------------------------
# index.json
# ----------------------------------------------------------------------------------------------------------

def _plain_name(name: object) -> bool:
    """A bare file name: an index that names ``../x.tar`` or ``/data/x.tar`` would make a reader open files
    outside the folder it was given."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and os.sep not in name and not os.path.isabs(name))


def _no_index_error(folder: Path) -> ShardsNotFoundError:
    tars = sorted(folder.glob("*.tar"))
    if tars:
        return ShardsNotFoundError(
            f"{folder} holds {len(tars)} .tar files but no {INDEX_NAME}, which gives the sample counts the loader "
            f"needs. If they are WebDataset shards from another tool, index them with "
            f"ijepa.data.shards.writer.write_index({str(folder)!r}); otherwise {_HOW_TO_CREATE}.")
    return ShardsNotFoundError(f"no shards in {folder}: {_HOW_TO_CREATE}.")


def read_index(shards_dir_or_glob: str | os.PathLike) -> tuple[dict[str, Any], list[ShardInfo], list[str] | None]:
    """Resolve a shard folder, an ``index.json`` path or a glob over shard files (a subset of the folder's
    index, e.g. ``DIR/shard-00000*.tar``) to ``(index, shards, classes or None)``.

    Raises :class:`ShardsNotFoundError` when there is no folder, no shard, no index, the index lists a shard that
    is missing or names a file outside its folder; warns (:class:`ShardReadWarning`) when a shard's size differs
    from the index's."""
    spec = os.fspath(shards_dir_or_glob)
    selected: list[str] | None = None
    if os.path.isdir(spec):
        folder = Path(spec)
        if not (folder / INDEX_NAME).is_file():
            raise _no_index_error(folder)
    elif os.path.isfile(spec) and spec.endswith(".json"):
        folder = Path(spec).parent
    elif glob.has_magic(spec):
        matches = sorted(Path(p) for p in glob.glob(spec))
        if not matches:
            raise ShardsNotFoundError(f"no shards match {spec!r}: {_HOW_TO_CREATE}.")
        if len({p.parent for p in matches}) > 1:
            raise ShardsNotFoundError(f"{spec!r} matches files in several folders; each folder has its own "
                                      f"{INDEX_NAME}, so read one folder per dataset")
        folder = matches[0].parent
        if not (folder / INDEX_NAME).is_file():
            raise _no_index_error(folder)
        selected = [p.name for p in matches if p.name.endswith(".tar")]
    elif os.path.isfile(spec) and spec.endswith(".tar"):
        folder, selected = Path(spec).parent, [Path(spec).name]
        if not (folder / INDEX_NAME).is_file():
            raise _no_index_error(folder)
    else:
        raise ShardsNotFoundError(f"shard folder {spec!r} does not exist; {_HOW_TO_CREATE}.")

    index_path = folder / INDEX_NAME
    index, entries = parse_index(index_path.read_text(), index_path, spec, selected)
    shards = [ShardInfo(folder / e["name"], e["name"], int(e["count"]), e.get("bytes")) for e in entries]
    check_present(shards, {s.name: s.path.stat().st_size for s in shards if s.path.is_file()}, index_path)
    classes = None
    if (folder / CLASSES_NAME).is_file():
        classes = json.loads((folder / CLASSES_NAME).read_text())
    return index, shards, classes


def parse_index(text: str, index_path: object, spec: str, selected: list[str] | None
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``index.json``'s ``text`` (read from ``index_path``, a path or a URL) -> ``(index, entries)``: the entries of
    the ``selected`` shard names (all of them for ``None``), checked to be a shard index naming plain files."""
    folder = str(index_path).rpartition("/")[0] or "."
    try:
        index = json.loads(text)
        entries = index["shards"]
        by_name = {e["name"]: e for e in entries}
    except (ValueError, KeyError, TypeError) as e:
        raise ShardsNotFoundError(f"{index_path} is not a shard index ({type(e).__name__}: {e}); re-create it "
                                  f"with ijepa.data.shards.writer.write_index({folder!r})") from None
    if index.get("format") != INDEX_FORMAT:
        raise ShardsNotFoundError(f"{index_path} is not an {INDEX_FORMAT} index")
    if selected is not None:
        unknown = [n for n in selected if n not in by_name]
        if unknown:
            raise ShardsNotFoundError(f"{len(unknown)} shard(s) matching {spec!r} are not in {index_path} (e.g. "
                                      f"{unknown[0]}); re-index with ijepa.data.shards.writer.write_index("
                                      f"{folder!r})")
        entries = [by_name[n] for n in selected]
    if not entries:
        raise ShardsNotFoundError(f"{index_path} lists no shards; {_HOW_TO_CREATE}.")
    outside = next((e["name"] for e in entries if not _plain_name(e["name"])), None)
    if outside is not None:
        raise ShardsNotFoundError(f"{index_path} names {outside!r}, which is not a file in its own folder: an index "
                                  f"lists the shards beside it by file name only")
    return index, entries


def check_present(shards: list[ShardInfo], sizes: dict[str, int], index_path: object) -> None:
    """Raise :class:`ShardsNotFoundError` when a shard has no entry in ``sizes`` (name -> bytes found), warn
    (:class:`ShardReadWarning`) when its size differs from the index's."""
    missing = [s.name for s in shards if s.name not in sizes]
    if missing:
        raise ShardsNotFoundError(f"{len(missing)} shard(s) listed in {index_path} are missing (e.g. "
                                  f"{missing[0]}); copy them back or re-create the shards")
    for s in shards:
        if s.nbytes is not None and sizes[s.name] != s.nbytes:
            warnings.warn(f"{s.path} is {sizes[s.name]} bytes but {INDEX_NAME} says {s.nbytes}: truncated or "
                          "replaced. Samples that cannot be read from it are yielded as None (counted as corrupt).",
                          ShardReadWarning, stacklevel=4)
