"""CPU slicing of the encoder's batch (``cpu_chunk_tokens``): forward-pass images/s against the whole batch.

    python benchmarks/cpu_chunks.py                         # the CPU default's encoder and three other shapes
    python benchmarks/cpu_chunks.py --shapes vit_base:2:28:4:1 --batches 512 --chunks 0,768,1536,3072

On the CPU a whole batch's activations fall out of the caches and the elementwise work around the matmuls
(copies, adds, layer norms, GELU) becomes memory-bound; forward-only passes (``models.vit.inference_forward``:
feature extraction, the training monitor) therefore run the blocks on slices of the batch of about
``CPU_CHUNK_TOKENS`` tokens. Each row runs ``--n-images`` images through the encoder as extraction does (batches of
``--batches``, inference mode, the resolved precision's autocast, mean-pooled) with ``cpu_chunk_tokens=c``; the
reference in every row is ``c = 0`` (the whole batch at once, what training runs), measured in the same run. The
last row of each batch size is ``ijepa.eval.extract.extract_features`` itself (``prepare=False``), which should
match the ``CPU_CHUNK_TOKENS`` row. The configurations take turns for ``--rounds`` rounds, and each keeps its
fastest round. The outputs are checked before anything is timed: equal to the bit in fp32, within the dtype's
rounding in bf16. Prints a table with the ratio against the whole batch and writes JSON. The training step's
ratio (0.98x, docs/experiments/2026-11-loader-and-step-benchmarks.md) was measured with a training option since
removed: training runs each batch whole.
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
from ijepa.models.vit import CPU_CHUNK_TOKENS
from ijepa.precision import Precision, resolve_precision

EXTRACT = "extract_features"


def pooled_features(enc: torch.nn.Module, x: torch.Tensor, batch: int, chunk: int | str,
                    precision: Precision, dtype: str) -> torch.Tensor:
    """Mean-pooled features of ``x`` in batches of ``batch``, with the blocks on slices of ``chunk`` tokens (0: the
    whole batch), or through ``extract_features`` when ``chunk`` is :data:`EXTRACT`."""
    if chunk == EXTRACT:
        return extract_features(enc, x, batch_size=batch, dtype=dtype, progress=False, prepare=False)
    out = []
    with torch.inference_mode(), precision.autocast():
        for i in range(0, len(x), batch):
            out.append(enc(x[i:i + batch], cpu_chunk_tokens=chunk).mean(1).float())
    return torch.cat(out)


def parse_shape(s: str) -> dict:
    arch, depth, img, patch, chans = s.split(":")
    return {"arch": arch, "depth": int(depth), "img": int(img), "patch": int(patch), "chans": int(chans)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["vit_base:2:28:4:1", "vit_small:3:28:4:1", "vit_large:2:28:4:1",
                                                   "vit_base:12:224:16:3"],
                   help="arch:depth:image:patch:channels (the first is the CPU default's encoder)")
    p.add_argument("--batches", default="512,64", help="extraction batch sizes (fmnist-probe uses 512)")
    p.add_argument("--chunks", default=f"0,{CPU_CHUNK_TOKENS}",
                   help="cpu_chunk_tokens values; 0 (the whole batch) is the reference")
    p.add_argument("--n-images", type=int, default=2048, help="images per measurement (a quarter at 224 px)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", choices=("bf16", "fp32", "auto"), default="auto")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "cpu_chunks.json")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]
    if 0 not in chunks:
        chunks = [0] + chunks

    precision = resolve_precision(args.dtype, "cpu")
    # fp32: the same bits. bf16: oneDNN's kernels may round differently at another batch size (on an AMX CPU,
    # pooled features differ by up to ~1e-3), so within one unit of bf16 rounding.
    tolerance = torch.finfo(precision.dtype).eps if precision.reduced else 0.0
    rows = []
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {precision}")
    print(f"{'encoder':28s} {'batch':>5s} {'chunk':>16s} {'img/s':>8s} {'vs whole':>9s}")
    for spec in args.shapes:
        s = parse_shape(spec)
        torch.manual_seed(0)
        enc = build_encoder(s["arch"], patch_size=s["patch"], img_size=s["img"], in_chans=s["chans"],
                            depth=s["depth"]).eval()
        n = args.n_images if s["img"] <= 64 else max(args.n_images // 4, 64)
        x = torch.rand(n, s["chans"], s["img"], s["img"])
        for bs in batches:
            runs = chunks + [EXTRACT]
            outs = {c: pooled_features(enc, x[:min(bs, n)], bs, c, precision, args.dtype) for c in runs}  # warm-up
            for c in runs:  # and the check that slicing changes nothing beyond the dtype's rounding
                ref = outs[CPU_CHUNK_TOKENS if c == EXTRACT and CPU_CHUNK_TOKENS in outs else 0]
                diff = (outs[c] - ref).abs().max().item()
                if diff > tolerance * ref.abs().max().item():
                    raise SystemExit(f"{spec}: cpu_chunk_tokens={c} changes the features (max diff {diff:.3g})")
            best = {c: float("inf") for c in runs}
            for _ in range(args.rounds):
                for c in runs:
                    t = time.perf_counter()
                    pooled_features(enc, x, bs, c, precision, args.dtype)
                    best[c] = min(best[c], time.perf_counter() - t)
            for c in runs:
                ips, ratio = n / best[c], best[0] / best[c]
                rows.append({"shape": spec, "tokens": enc.num_patches, "batch": bs, "cpu_chunk_tokens": c,
                             "images_per_s": ips, "vs_whole_batch": ratio})
                label = "whole" if c == 0 else str(c)
                print(f"{spec:28s} {bs:5d} {label:>16s} {ips:8.1f} {ratio:8.2f}x", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "dtype": args.dtype,
                                     "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
