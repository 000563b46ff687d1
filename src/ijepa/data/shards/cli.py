"""The arguments of ``ijepa shards SRC DST``, and ``python -m ijepa.data.shards`` with them.

Only the standard library is imported at module level: the command itself (:func:`.writer.shards_command`)
imports torch, so it loads when it runs, not when the parser is built (``ijepa --help``)."""

from __future__ import annotations

import argparse

from ..layout import FOLDER_KINDS, FOLLOW_HELP, SPLIT_FOLDERS, SPLITS, split_help

__all__ = ["build_arg_parser", "main"]

# data.max_image_pixels's default (data/decode.py's DEFAULT_MAX_PIXELS; tests/test_folders.py checks they agree):
# repeated here because decode.py imports PIL, and `ijepa --help` reads this parser
DEFAULT_MAX_PIXELS = 100_000_000


def _int_or_none(s: str) -> int | None:
    return None if s.lower() == "none" else int(s)


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``shards`` (adds them to ``parser`` when given, e.g. a sub-command's parser)."""
    p = parser or argparse.ArgumentParser(prog="python -m ijepa.data.shards",
                                          description="Pack an image folder into WebDataset-style tar shards.")
    p.add_argument("src", help=f"the images, ROOT below: {FOLDER_KINDS} (--unlabelled). {SPLIT_FOLDERS}")
    p.add_argument("dst", help="output folder for <prefix>-NNNNNN.tar, index.json and classes.json, or a URL "
                               "(s3://bucket/set, gs://...: each shard is uploaded when complete, index.json last)")
    p.add_argument("--unlabelled", action="store_true",
                   help="read SRC as the kind 'folder' (every image, no labels written) instead of 'imagefolder'")
    p.add_argument("--split", choices=SPLITS, help=split_help("SRC is packed whole when it has no split folders; "
                                                              "with them, --split is required"))
    p.add_argument("--max-count", type=int, default=10_000, help="samples per shard at most (default 10000)")
    p.add_argument("--max-bytes", type=int, default=1 << 30, help="bytes per shard at most (default 1 GiB)")
    p.add_argument("--prefix", default="shard", help="shard file-name prefix (default 'shard')")
    p.add_argument("--shuffle-seed", type=_int_or_none, default=0,
                   help="seed of the sample order across shards; 'none' keeps the sorted folder order")
    p.add_argument("--max-image-pixels", type=_int_or_none, default=DEFAULT_MAX_PIXELS,
                   help=f"leave out images with more pixels, read from the header (default {DEFAULT_MAX_PIXELS:,}, "
                        "data.max_image_pixels's; 'none': no limit)")
    p.add_argument("--no-check", action="store_true",
                   help="pack every file as stored, without reading its header: non-images and images over the "
                        "pixel limit are then packed too (and skipped when read)")
    p.add_argument("--follow-symlinks", action="store_true", help=FOLLOW_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace shards already in DST")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    # Here, not at the top: the writer imports ijepa.data.datasets, and with it torch; `ijepa --help` builds
    # this module's parser and must not.
    from .writer import shards_command

    return shards_command(args)
