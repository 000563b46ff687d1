"""The ``ijepa eval``, ``ijepa extract`` and ``ijepa finetune`` commands: parsed arguments in, one call, the result
printed. ``ijepa.cli`` defines the arguments and imports this module only when one of them runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.datasets import dataset_info
from ..data.hf import choose_split as choose_hf_split
from ..data.sources import choose_split, mode_for, open_images, require, require_images, set_decoding
from ..data.transforms import make_eval_transform
from ..errors import ConfigError
from ..precision import resolve_precision
from .extract import extract_feature_set
from .feature_file import check_feature_path, save_features
from .finetune import FinetuneConfig, format_history, run_finetune
from .run import evaluate, find_checkpoint, format_table, load_model, save_results


def _hf(args: argparse.Namespace) -> dict:
    """``--dataset hf``'s options, as :func:`~ijepa.data.sources.open_images` takes them."""
    return {"name": args.hf_name, "image_column": args.image_column, "label_column": args.label_column}


def _root(args: argparse.Namespace) -> str | None:
    """The dataset's path: ``--hf-path`` for ``--dataset hf``, else ``--root``."""
    return args.hf_path if args.dataset == "hf" else args.root


def eval_command(args: argparse.Namespace) -> int:
    """``ijepa eval``: every protocol on the model and the baselines; a table, and the results as JSON."""
    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()] if args.baselines else []
    results = evaluate(args.model, protocols, baselines=baselines, which=args.which, path=args.path,
                       dataset=args.dataset, root=_root(args), split=args.split, train_dir=args.train_dir,
                       test_dir=args.test_dir, limit=args.limit, pooling=args.pooling, batch_size=args.batch_size,
                       progress=not args.no_progress, attentive_epochs=args.attentive_epochs,
                       follow_symlinks=args.follow_symlinks, hf=_hf(args) if args.dataset == "hf" else None)
    ckpt = find_checkpoint(args.model)
    default_json = (ckpt.parent if ckpt.is_file() else Path(".")) / f"eval_{'_'.join(protocols)}.json"
    out = save_results(results, args.json or default_json)
    print(f"\n{results['dataset']} — {', '.join(protocols)} ({results['models']['pretrained']['source']})")
    print(format_table(results))
    print(f"results: {out}")
    return 0


def extract_command(args: argparse.Namespace) -> int:
    """``ijepa extract``: pooled features of one split saved with their labels. A folder is opened and checked
    (a readable image) before the model is read; a root with split folders needs ``--split``
    (:mod:`ijepa.data.layout`)."""
    check_feature_path(args.out)  # a bad output name is one line before any work
    if args.dataset == "fashion_mnist":
        require("fashion_mnist", args.root)  # a wrong path is one line before the model is read
        split = args.split or "test"
        data = open_images("fashion_mnist", args.root, split=split, limit=args.limit)
    else:
        root = _root(args)
        require(args.dataset, root)
        if args.dataset == "hf":  # its own splits: --split, or its only one
            split, opts = choose_hf_split(root, args.hf_name, args.split), _hf(args)
        else:
            split, opts = choose_split(args.dataset, root, args.split), {}
        data = open_images(args.dataset, root, split=split, limit=args.limit, follow_symlinks=args.follow_symlinks,
                           **opts)
        require_images(data, dataset_info(data)["root"])
    encoder = load_model(args.model, args.which, args.path)
    if args.dataset == "fashion_mnist":
        fs = extract_feature_set(encoder, data.images, pooling=args.pooling, batch_size=args.batch_size,
                                 dtype=args.dtype)
        fs.labels, fs.classes = data.labels, list(data.classes)
    else:
        spec = encoder.input_spec
        tf = make_eval_transform(spec["image_size"][0], spec["mean"], spec["std"], in_chans=spec["in_chans"])
        set_decoding(data, tf, mode_for(spec["in_chans"]))
        fs = extract_feature_set(encoder, data, pooling=args.pooling, batch_size=args.batch_size, prepare=False,
                                 dtype=args.dtype)
    fs.meta.update(dataset=args.dataset, split=split, model=str(args.model))
    path = save_features(args.out, fs)
    precision = resolve_precision(args.dtype, next(encoder.parameters()).device)
    skipped = f", {len(fs.skipped)} unreadable files skipped (named in the record)" if fs.skipped else ""
    print(f"{tuple(fs.features.shape)} features ({args.pooling} pooling, {precision}, {encoder.source}){skipped}"
          f" -> {path}")
    return 0


def finetune_command(args: argparse.Namespace) -> int:
    """``ijepa finetune``: the flags given override :class:`FinetuneConfig`'s defaults; prints the history."""
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "min_lr": args.min_lr,
                 "layer_decay": args.layer_decay, "label_smoothing": args.label_smoothing,
                 "weight_decay": args.weight_decay, "drop_path": args.drop_path,
                 "warmup_epochs": args.warmup_epochs, "clip_grad": args.clip_grad, "dtype": args.dtype,
                 "seed": args.seed}
    cfg = FinetuneConfig(**{k: v for k, v in overrides.items() if v is not None})
    if args.no_augment:
        cfg.random_resized_crop = cfg.hflip = False
    images, root = args.images, args.root
    if args.dataset == "folder":
        raise ConfigError("fine-tuning trains a classifier: --dataset folder reads every image unlabelled; give "
                          "--dataset imagefolder (class sub-folders) with --root")
    if args.dataset == "imagefolder":  # the same folder as --images DIR, named as eval and extract name it
        if not root:
            raise ConfigError("--dataset imagefolder needs --root (class sub-folders, or train/ and val/ or test/ "
                              "split folders)")
        images, root = root, None
    if args.dataset == "hf":
        root = args.hf_path
    elif args.split is not None:
        raise ConfigError("--split names the split validated on of --dataset hf; a folder's is ROOT/val (or "
                          "ROOT/test)")
    res = run_finetune(args.src, args.out, cfg=cfg, dataset=args.dataset, images_dir=images,
                       root=root, limit=args.limit, which=args.which, path=args.path, device=args.device,
                       export_hf=args.export_hf, val_fraction=args.val_fraction, progress=not args.no_progress,
                       split=args.split, hf=_hf(args) if args.dataset == "hf" else None, license=args.license)
    print(f"\nfine-tuned {res['source']} on {res['dataset']} ({res['split']}): {res['n_train']} training, "
          f"{res['n_val']} validation images, {cfg.epochs} epochs, {res['seconds']:.0f} s")
    print(format_history(res))
    print(f"val top-1: {100 * res['final_val_top1']:.2f}% (best {100 * res['best_val_top1']:.2f}% at epoch "
          f"{res['best_epoch']})")
    print(f"results: {Path(args.out) / 'metrics.json'}; model: {Path(args.out) / 'model'}"
          + (f"; transformers: {res['export_hf']}" if res.get("export_hf") else ""))
    return 0
