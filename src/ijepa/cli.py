"""The ``ijepa`` command: the only module that reads argv. It defines the arguments; each command's parser names
the function that runs it (``run="module:function"``), which :func:`main` imports only then, so that ``ijepa
--help`` and ``ijepa COMMAND --help`` never import torch."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable

import yaml

from .config import PRECISIONS, available_configs, describe, load_config
from .data.layout import FOLDER_KINDS, FOLLOW_HELP, SPLIT_FOLDERS, SPLITS, split_help
from .data.shards.cli import build_arg_parser as add_shards_args
from .errors import IJepaError, missing_package
from .ladder import LADDER, describe_ladder
from .viz.cli import register as register_viz

TRAIN_EPILOG = """\
overrides:
  Any config key as section.key=value, e.g.  data.batch_size=64  optimization.lr=5e-4
  optimization.ema=[0.999,1.0]  meta.model_name=vit_small. Values are YAML (numbers, true/false, null, lists).
  `ijepa config --keys` lists every key with its default and meaning.

shipped configs (--config NAME): {configs}

the CPU default (no --config): a small ViT on Fashion-MNIST, the rung of this ladder that the machine can afford
(the choice and its reason are printed; docs/cpu-recipe.md has each rung's figures):
{ladder}

distributed:
  torchrun --nproc_per_node 8 -m ijepa train --config in1k_vith14_ep300 data.root_path=/data ...
  (or under SLURM, srun one task per GPU; see docs/distributed.md)

the run folder (docs/robustness.md):
  One run at a time: a second `ijepa train` into a folder in use stops, naming the owner (pid, host, since).
  A resume with other values of keys that change the run is refused, naming them, unless --allow-config-change
  (then config_changes.jsonl records them). summary.json says "complete": true once the run reached its last step.

exit status:
  0    the run ended by itself (summary.json "complete": false if optimization.max_steps stopped it early)
  130  stopped by SIGINT (Ctrl-C), 143 by SIGTERM, 138 by SIGUSR1: the latest checkpoint holds the step reached
       and re-running the same command resumes it (a second signal stops at once, also with 128 + its number)
  2    a config error (nothing was started); 1 any other error, printed as one line
"""
LICENSE_HELP = ("the licence the model card states, a Hub licence id (apache-2.0, mit, cc-by-4.0, ...); default "
                "unknown. Weights from the reference's published checkpoints always carry theirs, cc-by-nc-4.0")
DTYPE_HELP = ("the precision policy (meta.precision in training): auto = bf16 where native, fp16 with a gradient "
              "scaler on CUDA GPUs without bf16, fp32 elsewhere; an emulated bf16/fp16 runs as asked, with a warning")


def _train(args: argparse.Namespace) -> int:
    # Imported here, not at the top: the recipe imports torch, and building the parser must not.
    from .recipes import train_command
    from .train.loop import exit_status

    flags = [f"optimization.minutes={args.minutes}"] if args.minutes is not None else []
    flags += [f"meta.precision={args.dtype}"] if args.dtype else []
    flags += ["meta.allow_config_change=true"] if args.allow_config_change else []
    summary = train_command(args.config, args.out, list(args.overrides) + flags)
    if summary.get("world_size", 1) == 1 or _is_rank0():
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}, indent=2))
    return exit_status(summary)  # non-zero for a run a signal stopped: `ijepa train ... && ijepa eval ...` waits


def _is_rank0() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _config(args: argparse.Namespace) -> int:
    if args.keys:
        print(describe())
        return 0
    if args.list:
        print("\n".join(available_configs()))
        return 0
    name = args.config
    if name is None:  # what `ijepa train` runs here: the rung this machine's hardware gets (no step is timed)
        from .recipes import native_rung  # imports torch: only here, where the hardware is asked

        rung, why = native_rung()
        name = rung.config
        print(f"# no --config: {name}, the CPU default's rung for this machine's hardware ({why}).")
        if rung.min_fit is not None and rung is not LADDER[-1]:
            lower = LADDER[LADDER.index(rung) + 1].config
            print(f"# `ijepa train` first times a few steps and runs {lower} instead where, on a quiet machine, "
                  f"the time limit would fit under {rung.min_fit:.0%} of the configured steps (docs/cpu-recipe.md).")
    cfg = load_config(name, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ijepa", description="I-JEPA: pretrain, load published checkpoints, evaluate and visualise.")
    p.set_defaults(run=None, usage=p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_config, _add_eval, _add_finetune, _add_extract, _add_convert, _add_push,
                _add_shards, _add_models, register_viz):
        add(sub)
    return p


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="pretrain an encoder (CPU default: Fashion-MNIST, within 15 minutes on 2 cores)",
                       description="Pretrain an I-JEPA encoder. Everything a run writes goes under --out: the "
                                   "resolved config.yaml, log.csv (one row per step), monitor.csv (collapse "
                                   "checks), summary.json and checkpoints (<tag>-latest.pth.tar, <tag>-epN.pth.tar)."
                                   " Re-running the same command resumes from the latest checkpoint.",
                       epilog=TRAIN_EPILOG.format(configs=", ".join(available_configs()), ladder=describe_ladder()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", "-c",
                   help="YAML file or shipped config name (default: the CPU default's rung for this machine, below)")
    t.add_argument("--out", "-o", help="run folder (default: logging.folder, else runs/<config name>)")
    t.add_argument("--minutes", type=float,
                   help="time limit (optimization.minutes): train the configured length where it fits M minutes of "
                        "wall time here, else as many steps as fit, re-planned from the measured steps as the run "
                        "goes, every schedule annealed to the last step (the plan: horizon.json; a re-run resumes "
                        "it, optimization.replay=RUN/horizon.json replays it)")
    t.add_argument("--dtype", choices=PRECISIONS, help="meta.precision: " + DTYPE_HELP)
    t.add_argument("--allow-config-change", action="store_true",
                   help="meta.allow_config_change: resume a checkpoint written with other values of keys that change "
                        "the run, going on with the new ones (config_changes.jsonl records each change and its step)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.batch_size=64")
    t.set_defaults(run="ijepa.cli:_train")


def _add_config(sub) -> None:
    c = sub.add_parser("config", help="show a resolved config, list shipped configs, or document every key",
                       description="Print the config that `ijepa train` would run (after overrides), validated.")
    c.add_argument("--config", "-c", help="YAML file or shipped config name (default: what `ijepa train` runs here, "
                                          "the CPU default's rung for this machine's hardware)")
    c.add_argument("--keys", action="store_true", help="every key with its default and meaning (Markdown)")
    c.add_argument("--list", action="store_true", help="names of the shipped configs")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(run="ijepa.cli:_config")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder, checkpoint file, transformers/timm folder, our export, or a "
                                 "published model's name (see `ijepa models`) with --path")
    p.add_argument("--which", default="target_encoder", choices=["target_encoder", "encoder"],
                   help="for files holding both: the target (EMA) encoder, as the paper evaluates, or the "
                        "context encoder")
    p.add_argument("--path", help="the checkpoint file, when MODEL is a published model's name")


HF_KIND = ("hf: a Hugging Face dataset, --hf-path (a Hub id, or a local save_to_disk folder or folder of parquet or "
           "arrow files; pip install 'ijepa[hf]')")


def _add_hf_args(p: argparse.ArgumentParser) -> None:
    """--hf-path and the options of --dataset hf (data/hf.py)."""
    p.add_argument("--hf-path", help="with --dataset hf: a Hub dataset id (e.g. frgfm/imagenette) or a local folder "
                                     "(save_to_disk, or parquet or arrow files)")
    p.add_argument("--hf-name", help="with --dataset hf: the Hub configuration name (e.g. 320px)")
    p.add_argument("--image-column", help="with --dataset hf: the images' column (default: the Image feature's)")
    p.add_argument("--label-column", help="with --dataset hf: the labels' column (default: the ClassLabel "
                                          "feature's)")


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="evaluate an encoder: fmnist-probe, linear, k-NN, low-shot, attentive",
                       description="Evaluate frozen features. Features are extracted once per model and reused "
                                   "by every protocol; prints a table and writes JSON.")
    _add_model_args(e)
    e.add_argument("--protocol", default="fmnist-probe",
                   help="comma-separated: fmnist-probe (mean-pooled features, logistic regression on the first "
                        "10,000 Fashion-MNIST training images, all 10,000 test images), linear (all training "
                        "images, L2 chosen on a validation split), knn (k=20, T=0.07), lowshot (1/5/10 per class "
                        "and 1%%, 3 seeds), attentive (cross-attention probe on patch tokens)")
    e.add_argument("--baselines", default="random,pixels",
                   help="comma-separated baselines run through the same code: random (same architecture, "
                        "fresh weights), pixels (raw pixels); '' for none")
    e.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "imagefolder", "folder", "hf"],
                   help=f"fashion_mnist: fit on its training set, test on its test set; or a folder: {FOLDER_KINDS}. "
                        "The protocols need labels: imagefolder, fitted on ROOT/train and tested on ROOT/val (or "
                        f"ROOT/test); folder is refused; {HF_KIND}, fitted on its train split, tested on --split")
    e.add_argument("--root", help="Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist), or the "
                                  "imagefolder ROOT with its train/ and val/ (or test/) split folders")
    e.add_argument("--split",
                   help=f"the split tested on, ROOT/<split> (val or test). {SPLIT_FOLDERS}. Without --split: val/, "
                        "else test/; Fashion-MNIST: its test set; hf: one of its splits (default validation, else "
                        "val, else test)")
    e.add_argument("--train-dir", help="with --dataset imagefolder, instead of --root: the training images, in class "
                                       "sub-folders")
    e.add_argument("--test-dir", help="with --dataset imagefolder, instead of --root: the test images, in class "
                                      "sub-folders")
    e.add_argument("--limit", type=int, metavar="N",
                   help="only N images of each split: the first N of Fashion-MNIST's, a seeded random N of a "
                        "folder's (its first N would be its first classes only)")
    e.add_argument("--follow-symlinks", action="store_true", help=FOLLOW_HELP)
    _add_hf_args(e)
    e.add_argument("--pooling", default="mean", choices=["mean", "last4"],
                   help="mean of last-layer patch tokens (paper), or the means of the last 4 layers concatenated")
    e.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    e.add_argument("--attentive-epochs", type=int, default=20, help="training epochs of the attentive probe "
                                                                      "(default 20)")
    e.add_argument("--json", help="where to write the results (default: beside the checkpoint)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(run="ijepa.eval.commands:eval_command")


def _add_finetune(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune an encoder end to end with a linear classification head",
                       description="Fine-tune a pretrained encoder + linear head on mean-pooled patch tokens "
                                   "(transformers' IJepaForImageClassification): AdamW, layer-wise lr decay, "
                                   "warm-up + cosine, label smoothing, drop-path, random-resized crop + flip. "
                                   "Writes finetune_log.csv, metrics.json and model/ under --out.")
    f.add_argument("src", metavar="SRC", help="run folder, checkpoint file, transformers/timm folder, our export, "
                                              "or a published model's name with --path")
    f.add_argument("--which", default="target_encoder", choices=["target_encoder", "encoder"],
                   help="for files holding both: the target (EMA) encoder or the context encoder")
    f.add_argument("--path", help="the checkpoint file, when SRC is a published model's name")
    data = f.add_mutually_exclusive_group()
    data.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "imagefolder", "folder", "hf"],
                      help="fashion_mnist: train on the training set, validate on the 10,000 test images; or a "
                           f"folder: {FOLDER_KINDS}. A classifier needs labels: imagefolder, trained on ROOT/train "
                           "and validated on ROOT/val (or ROOT/test), or without split folders on all but "
                           f"--val-fraction of each class; folder is refused; {HF_KIND}, trained on its train "
                           "split and validated on --split")
    data.add_argument("--images", metavar="DIR", help="the same as --dataset imagefolder --root DIR")
    f.add_argument("--root", help="Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist), or the "
                                  f"imagefolder ROOT. {SPLIT_FOLDERS}")
    f.add_argument("--val-fraction", type=float, default=0.1,
                   help="with an imagefolder ROOT without split folders (or an hf dataset with no held-out split): "
                        "the share of each class held out to validate on (default 0.1)")
    f.add_argument("--split", help="with --dataset hf: the split validated on (default validation, else val, else "
                                   "test, else --val-fraction of train)")
    _add_hf_args(f)
    f.add_argument("--out", "-o", required=True, help="folder for finetune_log.csv, metrics.json and model/")
    f.add_argument("--epochs", type=int, help="default 10")
    f.add_argument("--batch-size", type=int, help="default 128")
    f.add_argument("--lr", type=float, help="base lr per 256 images, peak = lr * batch / 256 (default 1e-3)")
    f.add_argument("--min-lr", type=float, help="cosine floor (default 1e-6)")
    f.add_argument("--warmup-epochs", type=float, help="default 1")
    f.add_argument("--weight-decay", type=float, help="AdamW, matrices only (default 0.05)")
    f.add_argument("--layer-decay", type=float, help="layer-wise lr decay, 1 = off (default 0.75)")
    f.add_argument("--label-smoothing", type=float, help="default 0.1")
    f.add_argument("--drop-path", type=float, help="stochastic depth of the last block (default 0.1)")
    f.add_argument("--clip-grad", type=float, help="max gradient norm (default: no clipping)")
    f.add_argument("--dtype", choices=PRECISIONS, help=DTYPE_HELP)
    f.add_argument("--seed", type=int, help="default 0")
    f.add_argument("--no-augment", action="store_true", help="no random-resized crop or flip")
    f.add_argument("--limit", type=int, metavar="N",
                   help="only N images of each split: the first N of Fashion-MNIST's, a seeded random N of a "
                        "folder's")
    f.add_argument("--export-hf", metavar="DIR", help="also write a transformers IJepaForImageClassification folder, "
                                                      "with its model card (README.md)")
    f.add_argument("--license", metavar="ID", help="with --export-hf: " + LICENSE_HELP)
    f.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.set_defaults(run="ijepa.eval.commands:finetune_command")


def _add_extract(sub) -> None:
    x = sub.add_parser("extract", help="extract features to .npy or .safetensors",
                       description="Run a frozen encoder over a dataset and save pooled features (and labels).")
    _add_model_args(x)
    x.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "imagefolder", "folder", "hf"],
                   help=f"fashion_mnist, or a folder under --root: {FOLDER_KINDS}; or {HF_KIND}")
    x.add_argument("--root", help="the dataset's folder (Fashion-MNIST default /usr/share/datasets/fashion-mnist)")
    x.add_argument("--split",
                   help=split_help("Fashion-MNIST's test set (it has train and test); a ROOT without split folders, "
                                   "whole; a ROOT with them stops and asks for --split: the features are of one "
                                   "split, and a guess would be silent") + f" ({', '.join(SPLITS)}; hf: one of its "
                        "splits, and without --split its only one)")
    x.add_argument("--limit", type=int, metavar="N", help="only the first N images (for a folder, in sorted file "
                                                          "order)")
    x.add_argument("--follow-symlinks", action="store_true", help=FOLLOW_HELP)
    _add_hf_args(x)
    x.add_argument("--pooling", default="mean", choices=["mean", "last4", "tokens"],
                   help="mean: the mean of the last block's patch tokens, (N, D), the paper's linear-probe input "
                        "(default); last4: the means of the last 4 blocks concatenated, (N, 4D), for encoders of 4 "
                        "or more blocks; tokens: every patch token, (N, T, D), for an attentive probe")
    x.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    x.add_argument("--dtype", choices=PRECISIONS, default="auto", help=DTYPE_HELP)
    x.add_argument("--out", "-o", required=True,
                   help="features file, checked before any work: .npy (NAME_labels.npy and the record NAME.json "
                        "beside it) or .safetensors (one file)")
    x.set_defaults(run="ijepa.eval.commands:extract_command")


def _add_convert(sub) -> None:
    c = sub.add_parser("convert", help="convert a checkpoint to transformers, timm or our format",
                       description="Read any format `ijepa.interop.load` reads; write a transformers IJepaModel "
                                   "folder (hf), a timm folder or .safetensors (timm), or our .safetensors export.")
    c.add_argument("src", metavar="SRC", help="a checkpoint file, run folder, transformers/timm folder, our export, "
                                              "a published model's name (with --path) or a Hugging Face Hub repo id")
    c.add_argument("dst", metavar="DST", help="where to write: a folder for hf (and for timm, unless DST ends in "
                                              ".safetensors), a .safetensors file for ijepa. A folder is written "
                                              "whole and replaces DST, which may hold only an earlier export")
    c.add_argument("--to", default="ijepa", choices=["hf", "timm", "ijepa", "checkpoint"],
                   help="hf: a transformers IJepaModel folder; timm: a timm folder, or for a DST ending in "
                        ".safetensors that file and a .json of its name beside it; ijepa: our .safetensors, "
                        "architecture and input spec inside (default); checkpoint: a sharded training checkpoint "
                        "(meta.parallel: fsdp; SRC its .dcp folder or the run folder) as one resumable "
                        ".pth.tar file, optimizer state included")
    c.add_argument("--which", default="target_encoder", choices=["target_encoder", "encoder"],
                   help="for files holding both: the target (EMA) encoder, as the paper evaluates, or the context "
                        "encoder (what the published transformers and timm ports carry)")
    c.add_argument("--with-predictor", action="store_true", help="ijepa format only: keep the predictor")
    c.add_argument("--path", help="the checkpoint file, when SRC is a published model's name")
    c.add_argument("--license", metavar="ID", help="hf only: " + LICENSE_HELP)
    c.set_defaults(run="ijepa.interop.commands:convert_command")


def _add_push(sub) -> None:
    p = sub.add_parser("push", help="upload a run or an export to the Hugging Face Hub",
                       description="Upload to the Hugging Face Hub as a model repo (created if absent, else a new "
                                   "commit): a transformers folder as it is (its model card's usage example then "
                                   "naming the repo); a run folder, checkpoint or anything "
                                   "`ijepa convert` reads is exported to one first, with its model card (README.md). "
                                   "Needs a network and a token with write access (--token, HF_TOKEN or `hf auth "
                                   "login`); HF_ENDPOINT names another Hub.")
    p.add_argument("src", metavar="RUN_OR_EXPORT", help="a transformers folder (`ijepa convert --to hf`, `ijepa "
                                                        "finetune --export-hf`), or a run folder, checkpoint file or "
                                                        "anything else `ijepa convert` reads")
    p.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                                                          "visibility)")
    p.add_argument("--token", help="a Hugging Face token with write access (default: HF_TOKEN, else the saved login)")
    p.add_argument("--which", default="target_encoder", choices=["target_encoder", "encoder"],
                   help="when exporting a file holding both: the target (EMA) encoder or the context encoder")
    p.add_argument("--path", help="the checkpoint file, when RUN_OR_EXPORT is a published model's name")
    p.add_argument("--license", metavar="ID", help="when exporting: " + LICENSE_HELP)
    p.add_argument("--message", help="the commit message")
    p.set_defaults(run="ijepa.interop.push:push_command")


def _add_shards(sub) -> None:
    sh = sub.add_parser("shards", help="pack an image folder into WebDataset-style tar shards for training",
                        description="Pack a folder (imagefolder: class sub-folders; or, with --unlabelled, folder: "
                                    "every image) into tar shards with an index.json; train on them with "
                                    "data.dataset=shards data.root_path=DST. Image bytes are copied, never "
                                    "re-encoded; files that are not images or are over the pixel limit are left "
                                    "out, each named in the summary and index.json.")
    add_shards_args(sh)
    sh.set_defaults(run="ijepa.data.shards.writer:shards_command")


def _add_models(sub) -> None:
    m = sub.add_parser("models", help="list the published I-JEPA checkpoints this package knows")
    m.set_defaults(run="ijepa.interop.commands:models_command")


def _load(target: str) -> Callable:
    """``"module:function"`` -> the function, importing its module now: the one place a command's code is
    imported, when it runs rather than when the parser is built."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _one_line(e: IJepaError) -> int:
    print(f"ijepa: {e.kind}: {' '.join(str(e).splitlines())}", file=sys.stderr)
    return e.exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run is None:  # `ijepa` or `ijepa viz` alone: what there is to run
        args.usage.print_help()
        return 0
    try:
        if args.command != "config":  # every command that computes: fp32 on the CPU slows down on denormals
            _load("ijepa.device:flush_denormals")()  # (training sets it again from meta.flush_denormal)
        status = _load(args.run)(args) or 0
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except IJepaError as e:  # the errors we raise on purpose: one line; anything else is a bug (traceback)
        return _one_line(e)
    except ModuleNotFoundError as e:  # an optional package the command needs: one line naming its extra
        if (missing := missing_package(e)) is None:
            raise
        return _one_line(missing)
    except BrokenPipeError:  # `ijepa config | head`: the reader left; say nothing more, as a shell tool would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exiting flushes nowhere, quietly
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as e:  # Ctrl-C outside a run's loop, or a second stop signal while a run saved
        print("ijepa: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
