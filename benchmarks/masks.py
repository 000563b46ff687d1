"""Time multi-block mask sampling (both modes) against the training step it runs beside.

The sampler runs in the training loop's main process once per step, so what matters is its share of a step. The
step here is the recipe's own model (``--config``, by default the CPU default) on its own grid and batch: forward
(target, context, predictor, loss) and backward under the precision the run would resolve (``meta.precision``),
with a fresh mask geometry each step as in training; the optimizer and EMA updates (a few ms) are left out.
``--step-batch`` times fewer images and scales per image, for recipes whose step would take minutes here. Mask
sampling always runs on the CPU, as in training; only the step uses ``--device``.

    python benchmarks/masks.py                                   # the CPU default: 9 x 9 grid, batch 128
    python benchmarks/masks.py --config imagenette_vitb16 --step-batch 8 --step-repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ijepa.config import load_config
from ijepa.masks import MultiBlockMaskSampler
from ijepa.precision import resolve_precision
from ijepa.spec import InputSpec
from ijepa.train.ijepa import IJEPA


def time_masks(sampler: MultiBlockMaskSampler, batch_size: int, repeats: int, seed: int) -> list[float]:
    """Wall time (ms) of each of ``repeats`` calls, one fresh generator state per call as in training."""
    sampler(batch_size, torch.Generator().manual_seed(seed))  # warm-up: first-call allocations
    times = []
    for i in range(repeats):
        g = torch.Generator().manual_seed(seed + 1 + i)
        start = time.perf_counter()
        sampler(batch_size, g)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_step(cfg, batch: int, repeats: int, device: torch.device, precision: str) -> list[float]:
    """Wall time (ms) of the recipe's forward + backward on ``batch`` images, a new geometry each step (after one
    warm-up)."""
    torch.manual_seed(0)
    size, chans = cfg.data.crop_size, cfg.data.in_chans
    model = IJEPA.from_config(cfg, InputSpec.default(size, chans)).to(device)
    sampler = MultiBlockMaskSampler(model.grid_size, cfg.mask)
    images = torch.randn(batch, chans, size, size, device=device)
    autocast = resolve_precision(precision, device).autocast()

    def step(i: int) -> None:
        enc, pred = sampler(batch, torch.Generator().manual_seed(1000 + i))
        with autocast:
            loss = model(images, [m.to(device) for m in enc], [m.to(device) for m in pred])
        loss.float().backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step(0)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        step(1 + i)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="the recipe (default: the CPU default)")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides, key=value")
    parser.add_argument("--repeats", type=int, default=50, help="mask-sampling calls timed per mode")
    parser.add_argument("--step-batch", type=int, default=None, help="images per timed step (default: the recipe's "
                                                                     "batch), scaled per image to the batch")
    parser.add_argument("--step-repeats", type=int, default=5, help="steps timed (after one warm-up)")
    parser.add_argument("--device", default="cpu", help="device for the step: cpu, cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "masks.json")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.override)
    device = torch.device(args.device)
    batch = cfg.data.batch_size
    grid = cfg.data.crop_size // cfg.mask.patch_size

    masks = {}
    for mode in ("default", "reference"):
        try:
            sampler = MultiBlockMaskSampler(grid, dataclasses.replace(cfg.mask, mode=mode))
        except ValueError as e:  # a geometry the reference's sampler would hang on
            masks[mode] = {"unavailable": str(e)}
            continue
        t = time_masks(sampler, batch, args.repeats, args.seed)
        masks[mode] = {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t)}
    step_batch = args.step_batch or batch
    step = time_step(cfg, step_batch, args.step_repeats, device, cfg.meta.precision)
    step_ms = statistics.median(step) / step_batch * batch
    share = {m: r["median_ms"] / step_ms for m, r in masks.items() if "median_ms" in r}

    result = {
        "config": args.config or "CPU default", "overrides": args.override, "batch_size": batch,
        "grid": [grid, grid], "repeats": args.repeats, "masks": masks,
        "step": {"what": "the recipe's forward + backward, fresh masks each step", "device": str(device),
                 "precision": str(resolve_precision(cfg.meta.precision, device)), "step_batch": step_batch,
                 "repeats": args.step_repeats, "median_ms_at_batch": step_ms},
        "mask_share_of_step": share,
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
    }
    print(f"mask sampling: batch {batch}, {grid}x{grid} grid, median of {args.repeats}, CPU, "
          f"{torch.get_num_threads()} threads")
    print(f"{'mode':<10} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'share of step':>14}")
    for mode, r in masks.items():
        if "median_ms" not in r:
            print(f"{mode:<10} unavailable: {r['unavailable']}")
            continue
        print(f"{mode:<10} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f} {r['max_ms']:>8.2f} {share[mode]:>13.3%}")
    print(f"step: the recipe's forward + backward on {device} ({result['step']['precision']}), {step_batch} images: "
          f"{step_ms:.0f} ms per batch of {batch} (median of {args.step_repeats})")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
