"""The ``ijepa convert`` and ``ijepa models`` commands: parsed arguments in, one call, the result printed.
``ijepa.cli`` defines the arguments and imports this module only when one of them runs."""

from __future__ import annotations

import argparse

from .load import convert
from .registry import describe


def convert_command(args: argparse.Namespace) -> int:
    """``ijepa convert SRC DST``: any format :func:`~ijepa.interop.load` reads, written as ``--to`` names."""
    dst = convert(args.src, args.dst, to=args.to, which=args.which, with_predictor=args.with_predictor,
                  path=args.path)
    print(f"wrote {dst} ({args.to})")
    return 0


def models_command(args: argparse.Namespace) -> int:
    """``ijepa models``: the published checkpoints this package knows."""
    print(describe())
    return 0
