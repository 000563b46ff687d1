"""Feature-extraction throughput: our encoder vs transformers' ``IJepaModel`` vs timm's ViT, same weights, one run.

    python benchmarks/extract.py                                       # ViT-B/16 at 224 px, batch 64, fp32, CPU
    python benchmarks/extract.py --device cuda --dtype bf16 --batch 256 --n-images 4096
    python benchmarks/extract.py --arch vit_tiny --img 64 --batch 4 --n-images 8   # smoke test

One encoder is built with random weights and exported with ``ijepa.interop.export`` to a transformers folder
and a timm folder, which are loaded back by the libraries themselves (``IJepaModel.from_pretrained`` with
``attn_implementation="sdpa"``, ``timm.create_model("local-dir:DIR", pretrained=True)``), so all three compute
the same function; the script checks they agree on one batch before timing anything. Each timed batch is one
forward pass returning the last layer's patch tokens (B, N, D) under ``torch.inference_mode()``, ours through
``ijepa.models.vit.inference_forward`` as extraction runs it (on the CPU, its blocks on slices of the batch); with
``--dtype bf16`` all three run under bf16 autocast. The three models take turns batch by batch, in a rotating order,
so a slow stretch of a shared machine hits all of them alike; the figure is the median over the timed batches
after warm-up. Prints a table and the ratios ours/transformers and ours/timm, and writes JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

# Everything is loaded from local folders written here; never let a library reach for the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# fp32 outputs of the same weights may differ by summation order only; beyond this something is wrong.
FP32_TOL = 1e-3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def build_models(args: argparse.Namespace, workdir: Path, device: torch.device
                 ) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], dict[str, str]]:
    """The three forward functions (images -> (B, N, D) tokens) over the same weights, and notes on how each
    computes attention."""
    import timm
    import transformers

    from ijepa.interop import export
    from ijepa.models.vit import CPU_CHUNK_TOKENS, build_encoder, inference_forward

    torch.manual_seed(args.seed)
    ours = build_encoder(args.arch, args.patch, args.img).eval()
    with torch.no_grad():
        # Non-trivial LayerNorm parameters, so a dropped or swapped norm cannot pass the agreement check.
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf_dir = export(ours, workdir / "hf", to="hf", source="benchmark")
    timm_dir = export(ours, workdir / "timm", to="timm").parent
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.IJepaModel.from_pretrained(hf_dir, attn_implementation="sdpa").eval()
    tm = timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()
    ours, hf, tm = ours.to(device), hf.to(device), tm.to(device)
    fns = {
        "ours": lambda x: inference_forward(ours, x),  # as ``ijepa extract`` / ``ijepa eval`` run it
        "transformers": lambda x: hf(pixel_values=x).last_hidden_state,
        "timm": lambda x: tm.forward_features(x),
    }
    notes = {
        "ours": "F.scaled_dot_product_attention (fused qkv)"
                + (f"; blocks on slices of {CPU_CHUNK_TOKENS} tokens" if device.type == "cpu" else ""),
        "transformers": f"attn_implementation={hf.config._attn_implementation!r}",
        "timm": f"fused_attn={getattr(tm.blocks[0].attn, 'fused_attn', None)} (F.scaled_dot_product_attention)",
    }
    return fns, notes


def run(args: argparse.Namespace) -> dict:
    import timm
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_batches = max(1, -(-args.n_images // args.batch))
    with tempfile.TemporaryDirectory(prefix="ijepa-bench-") as tmp:
        fns, notes = build_models(args, Path(tmp), device)
    g = torch.Generator().manual_seed(args.seed + 1)
    # Already-normalised images: preprocessing is not what is compared. One batch tensor, reused, so memory
    # traffic for inputs is the same for every model.
    x = torch.randn(args.batch, 3, args.img, args.img, generator=g).to(device)

    with torch.inference_mode(), _autocast(device, args.dtype):
        outs = {name: fn(x).float() for name, fn in fns.items()}
    diffs = {f"ours_vs_{name}": (outs["ours"] - outs[name]).abs().max().item() for name in ("transformers", "timm")}
    shapes = {name: list(o.shape) for name, o in outs.items()}
    del outs
    if len({tuple(s) for s in shapes.values()}) != 1:
        raise SystemExit(f"the three models return different shapes: {shapes}")
    agree = args.dtype == "bf16" or max(diffs.values()) <= FP32_TOL

    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    with torch.inference_mode(), _autocast(device, args.dtype):
        for i in range(args.warmup + n_batches):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                _sync(device)
                t = time.perf_counter()
                fns[name](x)
                _sync(device)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t)

    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {"median_batch_ms": med * 1e3, "images_per_s": args.batch / med,
                         "min_batch_ms": min(ts) * 1e3, "timed_batches": len(ts), "attention": notes[name]}
    ips = {name: r["images_per_s"] for name, r in results.items()}
    return {
        "config": {"arch": args.arch, "patch": args.patch, "img": args.img, "batch": args.batch,
                   "timed_batches": n_batches, "warmup": args.warmup, "dtype": args.dtype, "device": str(device),
                   "threads": torch.get_num_threads(), "tokens_out": shapes["ours"][1:]},
        "environment": {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                        else _cpu_name(),
                        "python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "timm": timm.__version__},
        "max_abs_diff": diffs,
        "outputs_agree": agree,
        "results": results,
        "ratios": {"ours_over_transformers": ips["ours"] / ips["transformers"],
                   "ours_over_timm": ips["ours"] / ips["timm"]},
    }


def report(out: dict) -> str:
    c = out["config"]
    lines = [f"{c['arch']}/{c['patch']} at {c['img']} px, batch {c['batch']}, {c['dtype']}, {c['device']} "
             f"({out['environment']['device_name']}, {c['threads']} threads), median of {c['timed_batches']} "
             f"batches after {c['warmup']} warm-up",
             "max |ours - other| on one batch: " + ", ".join(f"{k.removeprefix('ours_vs_')} {v:.2e}"
                                                             for k, v in out["max_abs_diff"].items())
             + ("" if out["outputs_agree"] else f"  (> {FP32_TOL}: outputs DISAGREE)"),
             f"{'model':<14}{'ms/batch':>10}{'images/s':>11}  attention"]
    for name, r in out["results"].items():
        lines.append(f"{name:<14}{r['median_batch_ms']:>10.2f}{r['images_per_s']:>11.1f}  {r['attention']}")
    rt = out["ratios"]
    lines.append(f"ours/transformers {rt['ours_over_transformers']:.3f}x, ours/timm {rt['ours_over_timm']:.3f}x "
                 "(images/s; > 1 means ours is faster)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_base")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-images", type=int, default=512, help="images timed per model (batches = n-images / batch)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per model first")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, for all three")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "extract.json")
    args = p.parse_args(argv)
    if min(args.batch, args.n_images, args.img, args.patch) < 1 or args.warmup < 0:
        p.error("--batch, --n-images, --img and --patch must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run(args)
    print(report(out))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"results: {args.json}")
    return 0 if out["outputs_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
