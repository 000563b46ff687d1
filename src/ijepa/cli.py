"""The ``ijepa`` command: parse arguments, call one function, print. The only module that reads argv."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DEFAULT_CONFIG, ConfigError, available_configs, describe, load_config

TRAIN_EPILOG = """\
overrides:
  Any config key as section.key=value, e.g.  data.batch_size=64  optimization.lr=5e-4
  optimization.ema=[0.999,1.0]  meta.model_name=vit_small. Values are YAML (numbers, true/false, null, lists).
  `ijepa config --keys` lists every key with its default and meaning.

shipped configs (--config NAME): {configs}
  With no --config, the CPU default '{default}' trains on Fashion-MNIST.

distributed:
  torchrun --nproc_per_node 8 -m ijepa train --config in1k_vith14_ep300 data.root_path=/data ...
  (or under SLURM, srun one task per GPU; see docs/distributed.md)
"""


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import train  # torch is imported only by the commands that need it

    cfg = load_config(args.config, args.overrides)
    out = args.out or cfg.logging.folder or f"runs/{Path(args.config or DEFAULT_CONFIG).stem}"
    cfg.logging.folder = str(out)
    summary = train(cfg, out)
    if summary.get("world_size", 1) == 1 or _is_rank0():
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}, indent=2))
    return 0


def _is_rank0() -> bool:
    import os
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        print(describe())
        return 0
    if args.list:
        print("\n".join(available_configs()))
        return 0
    import yaml
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ijepa", description="I-JEPA: pretrain, load published checkpoints, evaluate and visualise.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="pretrain an encoder (CPU default: Fashion-MNIST, ~12 minutes on 2 cores)",
                       description="Pretrain an I-JEPA encoder. Everything a run writes goes under --out: the "
                                   "resolved config.yaml, log.csv (one row per step), monitor.csv (collapse "
                                   "checks), summary.json and checkpoints (<tag>-latest.pth.tar, <tag>-epN.pth.tar)."
                                   " Re-running the same command resumes from the latest checkpoint.",
                       epilog=TRAIN_EPILOG.format(configs=", ".join(available_configs()), default=DEFAULT_CONFIG),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", "-c", help=f"YAML file or shipped config name (default: {DEFAULT_CONFIG})")
    t.add_argument("--out", "-o", help="run folder (default: logging.folder, else runs/<config name>)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.batch_size=64")
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("config", help="show a resolved config, list shipped configs, or document every key",
                       description="Print the config that `ijepa train` would run (after overrides), validated.")
    c.add_argument("--config", "-c", help="YAML file or shipped config name")
    c.add_argument("--keys", action="store_true", help="every key with its default and meaning (Markdown)")
    c.add_argument("--list", action="store_true", help="names of the shipped configs")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=_cmd_config)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except ConfigError as e:
        print(f"ijepa: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ijepa: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line error for the errors we raise on purpose
        from .errors import is_user_error
        if is_user_error(e):
            print(f"ijepa: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
