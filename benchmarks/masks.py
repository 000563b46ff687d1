"""Time multi-block mask sampling (both modes) against a training-step proxy.

The sampler runs in the training loop's main process once per step, so what matters is its cost relative to
a step. The proxy is a ViT-B/16 encoder at 224 px, forward + backward on ``--step-batch`` images (8 by
default on CPU, to keep it short), scaled per image to ``--batch-size``; the mask time is for the full
batch. Linear scaling is what a step costs once the batch fills the device (it overstates a small GPU batch).
Mask sampling always runs on the CPU, as in training; only the proxy uses ``--device``.

    python benchmarks/masks.py --batch-size 256 --img-size 224 --patch-size 14 --repeats 50
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ijepa.masks import MaskConfig, MultiBlockMaskSampler
from ijepa.models.vit import build_encoder


def time_masks(mode: str, grid: int, batch_size: int, repeats: int, seed: int) -> list[float]:
    """Wall time (ms) of each of ``repeats`` calls, one fresh generator state per call as in training."""
    sampler = MultiBlockMaskSampler(grid, MaskConfig(mode=mode))
    sampler(batch_size, torch.Generator().manual_seed(seed))  # warm-up: first-call allocations
    times = []
    for i in range(repeats):
        g = torch.Generator().manual_seed(seed + 1 + i)
        start = time.perf_counter()
        sampler(batch_size, g)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_step(step_batch: int, repeats: int, device: torch.device) -> list[float]:
    """Wall time (ms) of ViT-B/16 forward + backward on ``step_batch`` 224 px images (after one warm-up)."""
    model = build_encoder("vit_base", patch_size=16, img_size=224).to(device)
    images = torch.randn(step_batch, 3, 224, 224, device=device)
    # bf16 autocast on GPU, as the reference trains; full precision on CPU, where bf16 is slow on most chips
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            out = model(images)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=50, help="mask-sampling calls timed per mode")
    parser.add_argument("--step-batch", type=int, default=None, help="proxy batch (8 on CPU, 64 on GPU)")
    parser.add_argument("--step-repeats", type=int, default=3, help="proxy steps timed (after one warm-up)")
    parser.add_argument("--device", default="auto", help="device for the step proxy: auto, cpu, cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "masks.json")
    args = parser.parse_args(argv)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    step_batch = args.step_batch or (64 if device.type == "cuda" else 8)
    grid = args.img_size // args.patch_size

    masks = {}
    for mode in ("default", "reference"):
        t = time_masks(mode, grid, args.batch_size, args.repeats, args.seed)
        masks[mode] = {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t)}
    step = time_step(step_batch, args.step_repeats, device)
    step_ms = statistics.median(step)
    step_scaled_ms = step_ms / step_batch * args.batch_size

    result = {
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "patch_size": args.patch_size,
        "grid": [grid, grid],
        "repeats": args.repeats,
        "masks": masks,
        "step_proxy": {
            "model": "vit_base patch 16 @ 224, forward + backward",
            "device": str(device),
            "step_batch": step_batch,
            "repeats": args.step_repeats,
            "median_ms": step_ms,
            "scaled_to_batch_ms": step_scaled_ms,
        },
        "ratio_mask_over_step": {m: masks[m]["median_ms"] / step_scaled_ms for m in masks},
        "env": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
    }

    print(
        f"mask sampling: batch {args.batch_size}, {args.img_size}px / patch {args.patch_size} "
        f"({grid}x{grid} grid), median of {args.repeats}, CPU, {torch.get_num_threads()} threads"
    )
    print(f"{'mode':<10} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'mask / step':>13}")
    for mode, r in masks.items():
        ratio = result["ratio_mask_over_step"][mode]
        ms = f"{r['median_ms']:>10.2f} {r['min_ms']:>8.2f} {r['max_ms']:>8.2f}"
        print(f"{mode:<10} {ms} {ratio * 100:>12.2g}%")
    print(
        f"step proxy: ViT-B/16 fwd+bwd on {device}, batch {step_batch}: {step_ms:.1f} ms median of "
        f"{args.step_repeats} -> {step_scaled_ms:.0f} ms scaled to {args.batch_size} images"
    )

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
