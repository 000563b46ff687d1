"""One CPU-recipe experiment: pretrain with the CPU default plus overrides, then measure fmnist-probe.

    python benchmarks/recipe.py NAME [key=value ...] [--random-baseline] [--config fmnist_cpu_fp32] [--target-only]

Appends a JSON line to benchmarks/results/recipe.jsonl with what changed, images seen, minutes, fmnist-probe of
the target and context encoders, final loss and RankMe (effective rank of pooled test features), so every
experiment behind docs/experiments/2026-11-cpu-recipe-search.md can be re-run and compared.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ijepa.config import load_config
from ijepa.eval.extract import extract_features
from ijepa.eval.linear import fmnist_probe
from ijepa.train.ijepa import IJEPA
from ijepa.train.loop import train
from ijepa.train.monitor import rankme


def probe(encoder: torch.nn.Module) -> tuple[float, float]:
    res = fmnist_probe(encoder.eval(), progress=False)
    from ijepa.data.fashion_mnist import load_fashion_mnist
    x, _ = load_fashion_mnist(train=False)
    feats = extract_features(encoder, x[:2000], pooling="mean", progress=False)
    return res["accuracy"], rankme(feats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out-root", default="runs/recipe")
    p.add_argument("--results", default="benchmarks/results/recipe.jsonl")
    p.add_argument("--random-baseline", action="store_true", help="also probe a random-init encoder")
    p.add_argument("--config", default=None, help="the recipe to change (default: the CPU default, fmnist_cpu)")
    p.add_argument("--target-only", action="store_true", help="probe the target encoder only (not the context's)")
    args = p.parse_args()

    cfg = load_config(args.config, args.overrides + ["logging.progress=false", "meta.load_checkpoint=false"])
    out = Path(args.out_root) / args.name
    t0 = time.perf_counter()
    summary = train(cfg, out)
    train_min = (time.perf_counter() - t0) / 60
    from ijepa.train.checkpoint import load_checkpoint
    ckpt = load_checkpoint(out / f"{cfg.logging.write_tag}-latest.pth.tar")
    model = IJEPA.from_config(cfg, ckpt["input_spec"])
    enc, tgt = model.encoder, model.target_encoder
    tgt.load_state_dict(ckpt["target_encoder"])
    enc.load_state_dict(ckpt["encoder"])
    t1 = time.perf_counter()
    tgt_acc, tgt_rank = probe(tgt)
    ctx_acc = None if args.target_only else probe(enc)[0]
    row = {"name": args.name, "config": args.config or "fmnist_cpu", "overrides": args.overrides,
           "images_seen": summary["images_seen"],
           "train_minutes": round(train_min, 2), "images_per_s": round(summary["images_per_s"], 1),
           "final_loss": round(summary["final_loss"], 4), "target_probe": round(tgt_acc, 4),
           "context_probe": None if ctx_acc is None else round(ctx_acc, 4), "rankme": round(tgt_rank, 1),
           "probe_minutes": round((time.perf_counter() - t1) / 60, 2)}
    if args.random_baseline:
        torch.manual_seed(cfg.meta.seed)
        rnd = IJEPA.from_config(cfg, ckpt["input_spec"]).encoder
        row["random_probe"], row["random_rankme"] = (round(v, 4) for v in probe(rnd))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
