"""``ijepa shards SRC DST`` (and ``python -m ijepa.data.shards``): the arguments and the command.

Only the standard library is imported at module level: the writer (and with it torch) loads when the command
runs, not when the parser is built (``ijepa --help``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["build_arg_parser", "main", "shards_command"]


def shards_command(src: str | os.PathLike, dst: str | os.PathLike, labelled: bool = True, max_count: int = 10_000,
                   *, max_bytes: int = 1 << 30, prefix: str = "shard", shuffle_seed: int | None = 0,
                   overwrite: bool = False) -> int:
    """``ijepa shards SRC DST``: write the shards with a progress bar, print a summary, return the exit code."""
    # Here, not at the top: .format and .writer import ijepa.data.datasets, and with it torch.
    from .format import CLASSES_NAME, INDEX_NAME
    from .writer import write_shards

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
