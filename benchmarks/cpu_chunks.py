"""CPU slicing of the encoder's batch (``cpu_chunk_tokens``): feature-extraction images/s against the whole batch.

    python benchmarks/cpu_chunks.py                         # the CPU default's encoder and three other shapes
    python benchmarks/cpu_chunks.py --shapes vit_base:2:28:4:1 --batches 512 --chunks 0,768,1536,3072

On the CPU a whole batch's activations fall out of the caches and the elementwise work around the matmuls
(copies, adds, layer norms, GELU) becomes memory-bound; the encoder therefore runs its blocks on slices of the batch
of about ``cpu_chunk_tokens`` tokens (models/vit.py). The reference in every row is the same encoder with
``cpu_chunk_tokens = 0`` (the whole batch at once), measured in the same run: each configuration extracts
``--n-images`` images with ``ijepa.eval.extract.extract_features`` (bf16 autocast, as on this machine by default),
the configurations take turns for ``--rounds`` rounds, and each keeps its fastest round. The outputs are checked
to be equal before anything is timed. Prints a table with the ratio against the whole batch and writes JSON.
The training step's ratio (0.98x, docs/performance.md) was measured with a training option since removed:
training runs each batch whole.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ijepa.eval.extract import extract_features
from ijepa.models import build_encoder


def parse_shape(s: str) -> dict:
    arch, depth, img, patch, chans = s.split(":")
    return {"arch": arch, "depth": int(depth), "img": int(img), "patch": int(patch), "chans": int(chans)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["vit_base:2:28:4:1", "vit_small:3:28:4:1", "vit_large:2:28:4:1",
                                                   "vit_base:12:224:16:3"],
                   help="arch:depth:image:patch:channels (the first is the CPU default's encoder)")
    p.add_argument("--batches", default="512,64", help="extraction batch sizes (fmnist-probe uses 512)")
    p.add_argument("--chunks", default="0,1536", help="cpu_chunk_tokens values; 0 (the whole batch) is the reference")
    p.add_argument("--n-images", type=int, default=2048, help="images per measurement (a quarter at 224 px)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", choices=("bf16", "fp32", "auto"), default="auto")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "cpu_chunks.json")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]
    if 0 not in chunks:
        chunks = [0] + chunks

    rows = []
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, dtype {args.dtype}")
    print(f"{'encoder':28s} {'batch':>5s} {'chunk':>6s} {'img/s':>8s} {'vs whole':>9s}")
    for spec in args.shapes:
        s = parse_shape(spec)
        torch.manual_seed(0)
        enc = build_encoder(s["arch"], patch_size=s["patch"], img_size=s["img"], in_chans=s["chans"],
                            depth=s["depth"]).eval()
        n = args.n_images if s["img"] <= 64 else max(args.n_images // 4, 64)
        x = torch.rand(n, s["chans"], s["img"], s["img"])
        tokens = enc.num_patches
        for bs in batches:
            outs = {}
            for c in chunks:  # warm-up, and the check that slicing changes nothing
                enc.cpu_chunk_tokens = c
                outs[c] = extract_features(enc, x[:min(bs, n)], batch_size=bs, dtype=args.dtype, progress=False)
            for c in chunks:
                if not torch.equal(outs[c], outs[0]):
                    raise SystemExit(f"{spec}: cpu_chunk_tokens={c} changes the features "
                                     f"(max diff {(outs[c] - outs[0]).abs().max().item():.3g})")
            best = {c: float("inf") for c in chunks}
            for _ in range(args.rounds):
                for c in chunks:
                    enc.cpu_chunk_tokens = c
                    t = time.perf_counter()
                    extract_features(enc, x, batch_size=bs, dtype=args.dtype, progress=False)
                    best[c] = min(best[c], time.perf_counter() - t)
            for c in chunks:
                ips = n / best[c]
                ratio = best[0] / best[c]
                rows.append({"shape": spec, "tokens": tokens, "batch": bs, "cpu_chunk_tokens": c,
                             "images_per_s": ips, "vs_whole_batch": ratio})
                rows_per_slice = "whole" if c == 0 else f"{c}"
                print(f"{spec:28s} {bs:5d} {rows_per_slice:>6s} {ips:8.1f} {ratio:8.2f}x", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "dtype": args.dtype,
                                     "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
