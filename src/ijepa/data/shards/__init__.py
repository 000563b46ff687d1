"""Sharded tar input: stream an ImageNet-22K-size dataset from a few thousand tar files instead of a folder of
millions of small files.

Layout (WebDataset-compatible, written and read without the ``webdataset`` package): POSIX tar files
``<prefix>-000000.tar``, ``<prefix>-000001.tar``, … in one folder, each holding samples as consecutive members
that share a key: ``KEY.<ext>`` (the image file's bytes exactly as stored, ext one of
:data:`~ijepa.data.datasets.IMG_EXTENSIONS`) and, for labelled data, ``KEY.cls`` (the integer label as text).
Beside the shards, ``index.json`` lists every shard with its sample count and byte size, so a reader knows the
dataset's length and each rank's share without opening a tar, and ``classes.json`` (labelled data) lists the
class names, label ``i`` being ``classes[i]``.

:func:`write_shards` turns an image folder into shards; :func:`write_index` indexes tars written by other tools;
:class:`ShardDataset` reads them back as an ``IterableDataset`` of ``(image, label)`` — ``None`` for a sample
that cannot be decoded, as the folder datasets do, so :func:`~ijepa.data.datasets.collate_skip_corrupt`
counts it. How an epoch is split (see :class:`ShardDataset`): the epoch is the concatenation of all shards in
an order seeded by ``seed + epoch``; rank ``r`` takes the contiguous sample range ``[r·Q, (r+1)·Q)`` with
``Q = total // world_size``, and each DataLoader worker a contiguous part of its rank's range. Every rank
therefore yields exactly the same number of samples (DDP needs equal step counts), no sample is read twice in an
epoch, and the ``total % world_size`` left over are different samples each epoch.

From the command line: ``ijepa shards SRC DST`` or ``python -m ijepa.data.shards SRC DST``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .format import CLASSES_NAME, INDEX_NAME, ShardInfo, ShardReadWarning, ShardsNotFoundError, read_index
from .reader import ShardDataset, build_shard_loader
from .writer import write_index, write_shards

__all__ = ["CLASSES_NAME", "INDEX_NAME", "ShardDataset", "ShardInfo", "ShardReadWarning", "ShardsNotFoundError",
           "build_shard_loader", "main", "read_index", "shards_command", "write_index", "write_shards"]


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------

def shards_command(src: str | os.PathLike, dst: str | os.PathLike, labelled: bool = True, max_count: int = 10_000,
                   *, max_bytes: int = 1 << 30, prefix: str = "shard", shuffle_seed: int | None = 0,
                   overwrite: bool = False) -> int:
    """``ijepa shards SRC DST``: write the shards with a progress bar, print a summary, return the exit code."""
    paths = write_shards(src, dst, labelled=labelled, max_count=max_count, max_bytes=max_bytes, prefix=prefix,
                         shuffle_seed=shuffle_seed, overwrite=overwrite, progress=sys.stderr.isatty())
    index = json.loads((Path(dst) / INDEX_NAME).read_text())
    total = sum(p.stat().st_size for p in paths)
    extra = f", {index['num_classes']} classes in {CLASSES_NAME}" if index.get("num_classes") else ""
    skipped = f"; {index['skipped_files']} unreadable file(s) skipped" if index["skipped_files"] else ""
    print(f"{index['num_samples']} images in {len(paths)} shards ({total / 2**30:.2f} GiB) -> {dst} "
          f"({INDEX_NAME}{extra}){skipped}. Read them with ijepa.data.shards.ShardDataset({str(dst)!r}).")
    return 0


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``shards`` (adds them to ``parser`` when given, e.g. a sub-command's parser)."""
    p = parser or argparse.ArgumentParser(prog="python -m ijepa.data.shards",
                                          description="Pack an image folder into WebDataset-style tar shards.")
    p.add_argument("src", help="image folder: SRC/<class>/**/<image>, or any images with --unlabelled")
    p.add_argument("dst", help="output folder for <prefix>-NNNNNN.tar, index.json and classes.json")
    p.add_argument("--unlabelled", action="store_true", help="take every image under SRC, write no labels")
    p.add_argument("--max-count", type=int, default=10_000, help="samples per shard at most (default 10000)")
    p.add_argument("--max-bytes", type=int, default=1 << 30, help="bytes per shard at most (default 1 GiB)")
    p.add_argument("--prefix", default="shard", help="shard file-name prefix (default 'shard')")
    p.add_argument("--shuffle-seed", type=lambda s: None if s.lower() == "none" else int(s), default=0,
                   help="seed of the sample order across shards; 'none' keeps the sorted folder order")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in DST")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    return shards_command(args.src, args.dst, not args.unlabelled, args.max_count, max_bytes=args.max_bytes,
                          prefix=args.prefix, shuffle_seed=args.shuffle_seed, overwrite=args.overwrite)
