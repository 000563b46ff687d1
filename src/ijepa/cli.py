"""The ``ijepa`` command: parse arguments, call one function, print. The only module that reads argv."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from .config import PRECISIONS, available_configs, describe, load_config
from .errors import IJepaError
from .ladder import LADDER, choose_rung, describe_ladder, rungs_from

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
"""
DTYPE_HELP = ("the precision policy (meta.precision in training): auto = bf16 where native, fp16 with a gradient "
              "scaler on CUDA GPUs without bf16, fp32 elsewhere; an emulated bf16/fp16 runs as asked, with a warning")


def _cmd_train(args: argparse.Namespace) -> int:
    # Each command imports what it runs here, not at the top: building the parser (`ijepa --help`) stays light.
    from .train.loop import train

    flags = [f"optimization.minutes={args.minutes}"] if args.minutes is not None else []
    flags += [f"optimization.max_minutes={args.max_minutes}"] if args.max_minutes is not None else []
    flags += [f"meta.precision={args.dtype}"] if args.dtype else []
    overrides = list(args.overrides) + flags
    if args.config is not None:
        cfg = load_config(args.config, overrides)
        out = args.out or cfg.logging.folder or f"runs/{Path(args.config).stem}"
        cfg.logging.folder = str(out)
        summary = train(cfg, out)
    else:
        summary = _train_cpu_default(args.out, overrides, train)
    if summary.get("world_size", 1) == 1 or _is_rank0():
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}, indent=2))
    return 0


def _train_cpu_default(out: str | None, overrides: list[str], train) -> dict:
    # The machine's rung, stepping down while a rung finds at start-up that its time cap would cut it short.
    # A run folder given with --out keeps the rung it settled on (rung.json): re-running the command resumes that
    # rung's run instead of measuring again.
    from .errors import RecipeTooSlowError
    from .io import atomic_write_json

    rung, why = choose_rung()
    settled = Path(out) / "rung.json" if out else None
    if settled is not None and settled.is_file():
        name = json.loads(settled.read_text()).get("rung")
        rung, why = next(r for r in LADDER if r.config == name), f"{settled} says this run was started with it"
    print(f"CPU default: {rung.config}, because {why}; --config NAME runs another", flush=True)
    rungs = rungs_from(rung)
    cfgs = [load_config(r.config, overrides) for r in rungs]  # a bad override fails before anything runs
    for i, (rung, cfg) in enumerate(zip(rungs, cfgs)):
        folder = Path(out or cfg.logging.folder or f"runs/{rung.config}")
        cfg.logging.folder = str(folder)
        if settled is not None:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(settled, {"rung": rung.config, "because": why})
        try:
            return train(cfg, folder, min_fit=rung.min_fit if i < len(rungs) - 1 else None)
        except RecipeTooSlowError as e:
            why = f"{rungs[i].config} was too slow here ({e})"
            print(f"CPU default: {rungs[i + 1].config}, because {why}", flush=True)
    raise AssertionError("the last rung runs without min_fit, so it never steps down")


def _is_rank0() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        print(describe())
        return 0
    if args.list:
        print("\n".join(available_configs()))
        return 0
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ijepa", description="I-JEPA: pretrain, load published checkpoints, evaluate and visualise.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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
                   help="time budget (optimization.minutes): time a few steps, then train for as many steps as end "
                        "within M minutes of wall time, every schedule annealed over them; the step count goes to "
                        "budget.json, config.yaml and the checkpoint (a re-run resumes it, "
                        "optimization.total_steps=N reproduces it)")
    t.add_argument("--max-minutes", type=float,
                   help="time cap (optimization.max_minutes): keep the configured epochs if they fit M minutes "
                        "here, else train as many steps as fit, annealed as --minutes does (the CPU default's "
                        "rungs set one; optimization.max_minutes=null lifts it)")
    t.add_argument("--dtype", choices=PRECISIONS, help="meta.precision: " + DTYPE_HELP)
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


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval.run import evaluate, find_checkpoint, format_table, save_results

    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()] if args.baselines else []
    results = evaluate(args.model, protocols, baselines=baselines, which=args.which, path=args.path,
                       dataset=args.dataset, root=args.root, train_dir=args.train_dir, test_dir=args.test_dir,
                       limit=args.limit, pooling=args.pooling, batch_size=args.batch_size,
                       progress=not args.no_progress, attentive_epochs=args.attentive_epochs)
    ckpt = find_checkpoint(args.model)
    default_json = (ckpt.parent if ckpt.is_file() else Path(".")) / f"eval_{'_'.join(protocols)}.json"
    out = save_results(results, args.json or default_json)
    print(f"\n{results['dataset']} — {', '.join(protocols)} ({results['models']['pretrained']['source']})")
    print(format_table(results))
    print(f"results: {out}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from .data.sources import mode_for, open_images, require
    from .data.transforms import make_eval_transform
    from .eval.extract import extract_feature_set, save_features
    from .eval.run import load_model
    from .precision import resolve_precision

    require(args.dataset, args.root)  # a wrong path is one line before the model is read
    encoder = load_model(args.model, args.which, args.path)
    spec = encoder.input_spec
    if args.dataset == "fashion_mnist":
        data = open_images("fashion_mnist", args.root, split=args.split, limit=args.limit)
        fs = extract_feature_set(encoder, data.images, pooling=args.pooling, batch_size=args.batch_size,
                                 dtype=args.dtype)
        fs.labels, fs.classes = data.labels, list(data.classes)
        split = args.split
    else:  # a folder is one split: the whole tree under --root
        tf = make_eval_transform(spec["image_size"][0], spec["mean"], spec["std"], in_chans=spec["in_chans"])
        data = open_images(args.dataset, args.root, split=None, transform=tf, mode=mode_for(spec["in_chans"]),
                           limit=args.limit)
        fs = extract_feature_set(encoder, data, pooling=args.pooling, batch_size=args.batch_size, prepare=False,
                                 dtype=args.dtype)
        split = None
    fs.meta.update(dataset=args.dataset, split=split, model=str(args.model))
    path = save_features(args.out, fs)
    precision = resolve_precision(args.dtype, next(encoder.parameters()).device)
    skipped = f", {len(fs.skipped)} unreadable files skipped (named in the record)" if fs.skipped else ""
    print(f"{tuple(fs.features.shape)} features ({args.pooling} pooling, {precision}, {encoder.source}){skipped}"
          f" -> {path}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .eval.finetune import FinetuneConfig, format_history, run_finetune

    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "min_lr": args.min_lr,
                 "layer_decay": args.layer_decay, "label_smoothing": args.label_smoothing,
                 "weight_decay": args.weight_decay, "drop_path": args.drop_path,
                 "warmup_epochs": args.warmup_epochs, "clip_grad": args.clip_grad, "dtype": args.dtype,
                 "seed": args.seed}
    cfg = FinetuneConfig(**{k: v for k, v in overrides.items() if v is not None})
    if args.no_augment:
        cfg.random_resized_crop = cfg.hflip = False
    res = run_finetune(args.src, args.out, cfg=cfg, dataset=args.dataset, images_dir=args.images,
                       root=args.root, limit=args.limit, which=args.which, path=args.path, device=args.device,
                       export_hf=args.export_hf, val_fraction=args.val_fraction, progress=not args.no_progress)
    print(f"\nfine-tuned {res['source']} on {res['dataset']} ({res['split']}): {res['n_train']} training, "
          f"{res['n_val']} validation images, {cfg.epochs} epochs, {res['seconds']:.0f} s")
    print(format_history(res))
    print(f"val top-1: {100 * res['final_val_top1']:.2f}% (best {100 * res['best_val_top1']:.2f}% at epoch "
          f"{res['best_epoch']})")
    print(f"results: {Path(args.out) / 'metrics.json'}; model: {Path(args.out) / 'model'}"
          + (f"; transformers: {res['export_hf']}" if res.get("export_hf") else ""))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .interop import convert

    dst = convert(args.src, args.dst, to=args.to, which=args.which, with_predictor=args.with_predictor,
                  path=args.path)
    print(f"wrote {dst} ({args.to})")
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    from .data.shards import shards_command

    return shards_command(args.src, args.dst, labelled=not args.unlabelled, max_count=args.max_count,
                          max_bytes=args.max_bytes, prefix=args.prefix, shuffle_seed=args.shuffle_seed,
                          overwrite=args.overwrite)


def _cmd_models(args: argparse.Namespace) -> int:
    from .interop import describe as describe_models

    print(describe_models())
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder, checkpoint file, transformers/timm folder, our export, or a "
                                 "published model's name (see `ijepa models`) with --path")
    p.add_argument("--which", default="target_encoder", choices=["target_encoder", "encoder"],
                   help="for files holding both: the target (EMA) encoder, as the paper evaluates, or the "
                        "context encoder")
    p.add_argument("--path", help="the checkpoint file, when MODEL is a published model's name")


def _register_eval_commands(sub) -> None:
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
    e.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "folder"])
    e.add_argument("--root", help="Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)")
    e.add_argument("--train-dir", help="with --dataset folder: training images in class sub-folders")
    e.add_argument("--test-dir", help="with --dataset folder: test images in class sub-folders")
    e.add_argument("--limit", type=int, help="use only the first N images of each split")
    e.add_argument("--pooling", default="mean", choices=["mean", "last4"],
                   help="mean of last-layer patch tokens (paper), or the means of the last 4 layers concatenated")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--attentive-epochs", type=int, default=20)
    e.add_argument("--json", help="where to write the results (default: beside the checkpoint)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_eval)

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
    data.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist"],
                      help="Fashion-MNIST: train on the training set, validate on the 10,000 test images")
    data.add_argument("--images", metavar="DIR",
                      help="image folder with class sub-folders (with train/ and val/ (or test/) sub-folders "
                           "those are the splits, else --val-fraction of each class is held out)")
    f.add_argument("--root", help="Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)")
    f.add_argument("--val-fraction", type=float, default=0.1, help="with --images and no val/ folder")
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
    f.add_argument("--limit", type=int, help="use only N images of each split")
    f.add_argument("--export-hf", metavar="DIR", help="also write a transformers IJepaForImageClassification folder")
    f.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=_cmd_finetune)

    x = sub.add_parser("extract", help="extract features to .npy or .safetensors",
                       description="Run a frozen encoder over a dataset and save pooled features (and labels).")
    _add_model_args(x)
    x.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "imagefolder", "folder"])
    x.add_argument("--root", help="dataset folder")
    x.add_argument("--split", default="test", choices=["train", "test"], help="Fashion-MNIST split")
    x.add_argument("--limit", type=int)
    x.add_argument("--pooling", default="mean", choices=["mean", "last4", "tokens"])
    x.add_argument("--batch-size", type=int, default=256)
    x.add_argument("--dtype", choices=PRECISIONS, default="auto", help=DTYPE_HELP)
    x.add_argument("--out", "-o", required=True, help="features file: .npy (labels beside it) or .safetensors")
    x.set_defaults(func=_cmd_extract)

    c = sub.add_parser("convert", help="convert a checkpoint to transformers, timm or our format",
                       description="Read any format `ijepa.interop.load` reads; write a transformers IJepaModel "
                                   "folder (hf), a timm folder or .safetensors (timm), or our .safetensors export.")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--to", default="ijepa", choices=["hf", "timm", "ijepa"])
    c.add_argument("--which", default="target_encoder", choices=["target_encoder", "encoder"])
    c.add_argument("--with-predictor", action="store_true", help="ijepa format only: keep the predictor")
    c.add_argument("--path", help="the checkpoint file, when SRC is a published model's name")
    c.set_defaults(func=_cmd_convert)

    sh = sub.add_parser("shards", help="pack an image folder into WebDataset-style tar shards for training",
                        description="Pack a folder (class sub-folders, or any tree with --unlabelled) into tar "
                                    "shards with an index.json; train on them with data.dataset=shards "
                                    "data.root_path=DST. Image bytes are copied, never re-encoded.")
    from .data.shards import build_arg_parser
    build_arg_parser(sh)
    sh.set_defaults(func=_cmd_shards)

    m = sub.add_parser("models", help="list the published I-JEPA checkpoints this package knows")
    m.set_defaults(func=_cmd_models)


def _register_viz_commands(sub) -> None:
    from .viz.cli import register

    register(sub)


_EXTRA_COMMANDS: list = [_register_eval_commands, _register_viz_commands]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if args.command != "config":  # every command that computes: fp32 on the CPU slows down on denormals
            from .device import flush_denormals
            flush_denormals()          # (training sets it again from meta.flush_denormal)
        return args.func(args) or 0
    except IJepaError as e:  # the errors we raise on purpose: one line; anything else is a bug (traceback)
        print(f"ijepa: {e.kind}: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ijepa: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
