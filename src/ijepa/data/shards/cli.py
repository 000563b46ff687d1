"""The arguments of ``ijepa shards SRC DST``, and ``python -m ijepa.data.shards`` with them.

Only the standard library is imported at module level: the command itself (:func:`.writer.shards_command`)
imports torch, so it loads when it runs, not when the parser is built (``ijepa --help``)."""

from __future__ import annotations

import argparse

__all__ = ["build_arg_parser", "main"]


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
    # Here, not at the top: the writer imports ijepa.data.datasets, and with it torch; `ijepa --help` builds
    # this module's parser and must not.
    from .writer import shards_command

    return shards_command(args)
