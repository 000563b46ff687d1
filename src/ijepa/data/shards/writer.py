"""Writing tar shards: :func:`write_shards` packs an image folder, :func:`write_index` indexes tars written by
other tools. Both write the ``index.json`` the reader needs (the format is in :mod:`.format`).
:func:`shards_command` is ``ijepa shards`` (its arguments are in :mod:`.cli`)."""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import re
import sys
import tarfile
import warnings
from pathlib import Path
from typing import Any

from ...errors import OutputExistsError
from ...io import atomic_write_text
from ..datasets import CorruptImageWarning, FlatImageFolder, ImageFolderDataset, is_image_file
from ..decode import DEFAULT_MAX_PIXELS, header_problem
from ..sources import choose_split, require, split_root
from .format import (
    _HOW_TO_CREATE,
    CLASSES_NAME,
    INDEX_FORMAT,
    INDEX_NAME,
    INDEX_VERSION,
    ShardsNotFoundError,
    _count_samples,
    _iter_samples,
)
from .remote import URL, RemoteFolder, location

__all__ = ["shards_command", "write_index", "write_shards"]

# Fixed header fields make the shards byte-identical for the same input, whoever writes them and when.
_TAR_MTIME = 0
_TAR_MODE = 0o644
_BLOCK = 512
# Files left out that index.json lists by name (all of them are counted): a bound on the index's size, which every
# reader parses.
LISTED = 1000


def _padded(nbytes: int) -> int:
    """Bytes a member of ``nbytes`` takes in a tar: one header block plus the data rounded up to blocks."""
    return _BLOCK + -(-nbytes // _BLOCK) * _BLOCK


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


class _ShardWriter:
    """One shard being written: to a hidden temporary file, renamed into place only when complete, so a
    crash never leaves a truncated ``prefix-NNNNNN.tar`` that looks finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.file = open(self.tmp, "wb")  # closed by close() or abort()
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self.est_bytes = 2 * _BLOCK  # the end-of-archive blocks

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), _TAR_MTIME, _TAR_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))
            self.est_bytes += _padded(len(data))
        self.count += 1

    def close(self) -> int:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class _LocalFolder:
    """The output folder on this machine: shards are written in place (:class:`~.remote.RemoteFolder` is the
    same for a URL, uploading each shard when complete)."""

    def __init__(self, path: Path) -> None:
        self.path = self.staging = path

    def __str__(self) -> str:
        return str(self.path)

    def __enter__(self) -> _LocalFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def names(self) -> list[str]:
        self.path.mkdir(parents=True, exist_ok=True)
        return [p.name for p in self.path.iterdir()]

    def read_text(self, name: str) -> str | None:
        return (self.path / name).read_text() if (self.path / name).is_file() else None

    def write_json(self, name: str, obj: Any) -> None:
        _write_json(self.path / name, obj)

    def publish(self, path: Path) -> Path:
        return path

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


def _output(out_dir: str | os.PathLike) -> _LocalFolder | RemoteFolder:
    """Where shards go: a folder here, or a URL (``s3://``, ``gs://``…; ``file://`` is a folder here)."""
    where = location(out_dir)
    return RemoteFolder(where) if isinstance(where, URL) else _LocalFolder(Path(where))


def _shard_name(prefix: str, i: int) -> str:
    return f"{prefix}-{i:06d}.tar"


def write_shards(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, labelled: bool = True,
                 max_count: int = 10_000, max_bytes: int = 1 << 30, prefix: str = "shard",
                 shuffle_seed: int | None = 0, overwrite: bool = False, progress: bool = False,
                 check_images: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 follow_symlinks: bool = False) -> list[Path] | list[URL]:
    """Pack the images under ``src_root`` into tar shards in ``out_dir``; returns the shard paths in order.

    ``labelled=True`` reads ``src_root/<class>/**/<image>`` exactly as
    :class:`~ijepa.data.datasets.ImageFolderDataset` does (label = index of the class in sorted order) and
    writes ``classes.json``; ``labelled=False`` takes every image under ``src_root`` (as
    :class:`~ijepa.data.datasets.FlatImageFolder`) and writes no ``.cls`` members. A shard is closed when it
    holds ``max_count`` samples or the next sample would take it past ``max_bytes`` (tar's final padding of
    under 10 KiB aside; a single larger image still gets a shard of its own).

    Image bytes are copied as stored — nothing is decoded or re-encoded, so a corrupt file is packed as is and
    yields ``None`` when read. With ``check_images`` (what ``ijepa shards`` does) each file's header is read
    first, and a file PIL does not identify as an image, or one above ``max_pixels`` (``None``: no limit), is left
    out. Every file left out — those, files that cannot be *read* (vanished, no permission) and, for labelled
    data, images lying directly in ``src_root`` outside any class folder — is warned about and listed in
    index.json (``skipped_files``, the count; ``skipped``, the first :data:`LISTED` with the reason).
    ``follow_symlinks``: follow links to directories (see :class:`~ijepa.data.datasets._Walk`).

    The sample order is the folder dataset's sorted order permuted with ``random.Random(shuffle_seed)``
    (``None`` keeps it sorted). Shuffling here matters: a reader shuffles only shard order and within a small
    buffer, so sorted shards would give batches of one or two classes. A sample's key is its index in the
    folder dataset's sorted ``samples`` list (zero-padded), so ``ImageFolderDataset(src_root).samples[int(key)]``
    names the source file of any key a warning reports. The output depends only on the folder's contents and
    the arguments: the same input gives byte-identical shards.

    Each shard is written to a temporary file and renamed when complete; ``index.json`` is written last.
    ``out_dir`` may be a URL (``s3://bucket/set``, ``gs://``…; :mod:`.remote`): each shard is then written to a
    local temporary folder and uploaded when complete (the paths returned are URLs). An ``out_dir`` that already
    holds an index or shards of this prefix is refused unless ``overwrite=True``, which removes the old index first
    (so nothing reads a half-replaced set) and, last, the old ``<prefix>-NNNNNN.tar`` files the new set does not
    reuse.
    """
    if max_count < 1 or max_bytes < 1:
        raise ValueError(f"max_count and max_bytes must be >= 1, got {max_count} and {max_bytes}")
    if not prefix or "/" in prefix or os.sep in prefix:
        raise ValueError(f"prefix must be a non-empty file-name prefix, got {prefix!r}")
    ds = (ImageFolderDataset(src_root, follow_symlinks=follow_symlinks) if labelled
          else FlatImageFolder(src_root, follow_symlinks=follow_symlinks))
    classes = ds.classes if labelled else None
    order = list(range(len(ds.samples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    pattern = re.compile(rf"^{re.escape(prefix)}-\d{{6,}}\.tar$")
    check = _Check(max_pixels) if check_images else None
    with _output(out_dir) as out:
        old = _claim(out, pattern, prefix, overwrite)
        paths, entries, skipped = _pack(ds.samples, order, out, prefix, labelled=labelled, max_count=max_count,
                                        max_bytes=max_bytes, progress=progress, check=check)
        if labelled:
            loose = _loose_images(ds.root)
            for path, reason in loose:
                warnings.warn(f"Skipping {path}: {reason}", CorruptImageWarning, stacklevel=2)
            skipped = loose + skipped
        if classes is not None:
            out.write_json(CLASSES_NAME, classes)
        out.write_json(INDEX_NAME, {
            "format": INDEX_FORMAT, "version": INDEX_VERSION, "labelled": labelled,
            "num_samples": sum(e["count"] for e in entries), "num_classes": len(classes) if classes else None,
            "shuffle_seed": shuffle_seed, "key": "index into the source folder's sorted sample list",
            "checked": {"images": True, "max_pixels": max_pixels} if check_images else None,
            "skipped_files": len(skipped),
            "skipped": [{"file": os.path.relpath(f, ds.root), "reason": r} for f, r in skipped[:LISTED]],
            "shards": entries,
        })
        for name in sorted(old - {p.name for p in paths}):
            out.remove(name)
    return paths


def _claim(out: _LocalFolder | RemoteFolder, pattern: re.Pattern, prefix: str, overwrite: bool) -> set[str]:
    """Make ``out`` ready for a new set of shards: refuse one that holds an index or shards of this prefix unless
    ``overwrite``, then remove the old index (so nothing reads a half-replaced set). Returns the names of the old
    shards, which the caller removes last, once the new set is complete."""
    names = out.names()
    has_index = INDEX_NAME in names
    existing = sorted(n for n in names if pattern.match(n))
    if (has_index or existing) and not overwrite:
        raise OutputExistsError(f"{out} already holds {INDEX_NAME if has_index else 'shards'}"
                                f"{f' and {len(existing)} {prefix}-*.tar files' if existing else ''}; "
                                "pass overwrite=True (CLI: --overwrite) or choose another folder")
    old_names: set[str] = set()
    if has_index:
        try:
            old_names = {s["name"] for s in json.loads(out.read_text(INDEX_NAME) or "")["shards"]}
        except (ValueError, KeyError, TypeError):
            old_names = set()
        out.remove(INDEX_NAME)
    return {name for name in old_names | set(existing) if pattern.match(name)}


class _Check:
    """The header check of ``check_images``: why a file's bytes are not a usable image, or None."""

    def __init__(self, max_pixels: int | None) -> None:
        self.max_pixels = max_pixels

    def __call__(self, data: bytes) -> str | None:
        return header_problem(io.BytesIO(data), self.max_pixels)


def _loose_images(root: str) -> list[tuple[str, str]]:
    """Image files lying directly in a labelled folder's root: in no class folder, so they have no label."""
    with os.scandir(root) as it:
        loose = sorted(e.path for e in it if is_image_file(e.name) and not e.is_dir())
    return [(f, "outside any class folder, so without a label") for f in loose]


def _skip(skipped: list[tuple[str, str]], path: str, reason: str) -> None:
    warnings.warn(f"Skipping {path}: {reason}", CorruptImageWarning, stacklevel=3)
    skipped.append((path, reason))


def _pack(samples: list[tuple[str, int]], order: list[int], out: _LocalFolder | RemoteFolder, prefix: str, *,
          labelled: bool, max_count: int, max_bytes: int, progress: bool, check: _Check | None = None
          ) -> tuple[list[Path], list[dict[str, Any]], list[tuple[str, str]]]:
    """Copy the files ``samples[i]`` for ``i`` in ``order`` into shards of at most ``max_count`` samples and
    ``max_bytes`` bytes, each published to ``out`` when complete; returns the shards' paths (URLs for a remote
    ``out``), their index entries and the files left out, with why (in the folder's sorted order, whatever the
    shuffle)."""
    from tqdm.auto import tqdm  # here, so that importing ijepa.data stays light

    width = max(9, len(str(len(samples))))
    paths: list[Path] = []
    entries: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    writer: _ShardWriter | None = None

    def finish() -> None:
        nonlocal writer
        if writer is not None and writer.count:
            size = writer.close()
            paths.append(out.publish(writer.path))
            entries.append({"name": writer.path.name, "count": writer.count, "bytes": size})
        elif writer is not None:
            writer.abort()
        writer = None

    try:
        for i in tqdm(order, disable=not progress, unit="img", desc="shards", dynamic_ncols=True):
            path, label = samples[i]
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                _skip(skipped, path, f"cannot be read: {type(e).__name__}: {e}")
                continue
            problem = check(data) if check is not None else None
            if problem is not None:
                _skip(skipped, path, problem)
                continue
            members = [(Path(path).suffix.lower().lstrip("."), data)]
            if labelled:
                members.append(("cls", str(label).encode()))
            nbytes = sum(_padded(len(d)) for _, d in members)
            if writer is not None and (writer.count >= max_count or writer.est_bytes + nbytes > max_bytes):
                finish()
            if writer is None:
                writer = _ShardWriter(out.staging / _shard_name(prefix, len(paths)))
            writer.add(f"{i:0{width}d}", members)
        finish()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return paths, entries, sorted(skipped)


def shards_command(args: argparse.Namespace) -> int:
    """``ijepa shards SRC DST`` (arguments: :func:`~.cli.build_arg_parser`): write the shards with a progress bar
    on a terminal, print a summary, return the exit code. SRC is read as every command reads a folder
    (:mod:`ijepa.data.layout`): one split of a root with split folders, named by ``--split``."""
    kind = "folder" if args.unlabelled else "imagefolder"
    require(kind, args.src)
    src = split_root(kind, args.src, choose_split(kind, args.src, args.split))
    dst = args.dst
    paths = write_shards(src, dst, labelled=not args.unlabelled, max_count=args.max_count,
                         max_bytes=args.max_bytes, prefix=args.prefix, shuffle_seed=args.shuffle_seed,
                         overwrite=args.overwrite, progress=sys.stderr.isatty(), check_images=not args.no_check,
                         max_pixels=args.max_image_pixels, follow_symlinks=args.follow_symlinks)
    with _output(dst) as out:
        index = json.loads(out.read_text(INDEX_NAME) or "{}")
    total = sum(e["bytes"] for e in index["shards"])
    extra = f", {index['num_classes']} classes in {CLASSES_NAME}" if index.get("num_classes") else ""
    left_out = f"; {index['skipped_files']} file(s) left out, listed below" if index["skipped_files"] else ""
    print(f"{index['num_samples']} images in {len(paths)} shards ({total / 2**30:.2f} GiB) from {src} -> {dst} "
          f"({INDEX_NAME}{extra}){left_out}. Read them with ijepa.data.shards.reader.ShardDataset({str(dst)!r}).")
    if index["skipped_files"]:
        print(_left_out_line(index))
    return 0


def _left_out_line(index: dict[str, Any], shown: int = 5) -> str:
    """The files the index says were left out: every one counted, the first ``shown`` named with why."""
    listed = index["skipped"]
    names = "; ".join(f"{s['file']} ({s['reason']})" for s in listed[:shown])
    more = index["skipped_files"] - min(shown, len(listed))
    where = f" (index.json names the first {len(listed)})" if len(listed) > shown else ""
    return f"left out {index['skipped_files']} file(s): {names}" + (f"; and {more} more{where}" if more else "")


def write_index(shards_dir_or_glob: str | os.PathLike, *, labelled: bool | None = None) -> Path:
    """Count the samples of existing tar shards (e.g. written by ``webdataset`` or ``tarp``) and write the
    ``index.json`` :class:`ShardDataset` needs beside them; returns its path.

    Reads only tar headers. ``labelled=None`` records the data as labelled when the first shard's first sample
    has a ``.cls`` member. Shards are listed in sorted name order."""
    spec = os.fspath(shards_dir_or_glob)
    if os.path.isdir(spec):
        folder, files = Path(spec), sorted(Path(spec).glob("*.tar"))
    else:
        files = sorted(Path(p) for p in glob.glob(spec) if p.endswith(".tar"))
        folder = files[0].parent if files else Path(spec).parent
        if len({p.parent for p in files}) > 1:
            raise ValueError(f"{spec!r} matches shards in several folders; index.json describes one folder")
    if not files:
        raise ShardsNotFoundError(f"no .tar files at {spec!r}: {_HOW_TO_CREATE}")
    entries = [{"name": p.name, "count": _count_samples(p), "bytes": p.stat().st_size} for p in files]
    if labelled is None:
        with open(files[0], "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            first = next(_iter_samples(tar, lambda j: j == 0, stop=1), None)
        labelled = bool(first and "cls" in first[2])
    path = folder / INDEX_NAME
    _write_json(path, {"format": INDEX_FORMAT, "version": INDEX_VERSION, "labelled": labelled,
                       "num_samples": sum(e["count"] for e in entries), "num_classes": None,
                       "shuffle_seed": None, "key": "as written by the tool that made the shards",
                       "skipped_files": 0, "shards": entries})
    return path
