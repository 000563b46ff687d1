"""The ``ijepa convert`` and ``ijepa models`` commands: parsed arguments in, one call, the result printed.
``ijepa.cli`` defines the arguments and imports this module only when one of them runs."""

from __future__ import annotations

import argparse

from .load import convert
from .registry import describe
from .sharded import convert_sharded


def convert_command(args: argparse.Namespace) -> int:
    """``ijepa convert SRC DST``: any format :func:`~ijepa.interop.load` reads, written as ``--to`` names;
    ``--to checkpoint``: a sharded training checkpoint as the usual single file."""
    if args.to == "checkpoint":
        print(f"wrote {convert_sharded(args.src, args.dst)} (checkpoint)")
        return 0
    dst = convert(args.src, args.dst, to=args.to, which=args.which, with_predictor=args.with_predictor,
                  path=args.path, license=args.license)
    print(f"wrote {dst} ({args.to})")
    return 0


def models_command(args: argparse.Namespace) -> int:
    """``ijepa models``: the published checkpoints this package knows."""
    print(describe())
    return 0
