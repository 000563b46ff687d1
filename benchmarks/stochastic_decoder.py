"""The stochastic decoder's design measurements: flow matching against DDPM, and the token-grid denoiser against
a pixel-resolution ``diffusers`` UNet.

    python benchmarks/stochastic_decoder.py runs/quickstart                       # both processes, same budget
    python benchmarks/stochastic_decoder.py runs/quickstart --steps 300 --hidden 64 --depth 3 --n 64

For each process the decoder trains ``--steps`` steps on the same images, boxes and corruption draws (one seed),
then draws ``--k`` samples of ``--n`` held-out test images with the same number of sampling steps (Euler for
flow, DDIM for DDPM) and reports the figures of ``viz predict --measure`` (faithful, stochastic, diversity; no
classifier). Also prints the training FLOPs per image of the token-grid denoiser and of a small
``diffusers.UNet2DModel`` at the image's resolution (FLOPs, not seconds: wall time on a shared machine says
little), and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ijepa.viz.features import load_images
from ijepa.viz.predict import load_world_model, mask_config_of, sample_boxes
from ijepa.viz.samples import measure_samples
from ijepa.viz.stochastic import GridDenoiser, train_stochastic_decoder


def train_flops(model: torch.nn.Module, inputs: tuple) -> float:
    with FlopCounterMode(display=False) as fc:
        out = model(*inputs)
        (out.sample if hasattr(out, "sample") else out).sum().backward()
    return fc.get_total_flops() / len(inputs[0])


def flop_table(wm, hidden: int, depth: int) -> dict:
    a = wm.target_encoder
    (gh, gw), p, d = wm.grid_size, wm.patch_size, int(a.embed_dim)
    c = int(a.input_spec["in_chans"])
    x, t, cond = torch.randn(4, c, gh * p, gw * p), torch.rand(4), torch.randn(4, gh * gw, d)
    rows = {"grid_denoiser": train_flops(GridDenoiser(d, (gh, gw), p, c, hidden, depth), (x, t, cond))}
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return rows
    unet = UNet2DModel(sample_size=gh * p, in_channels=c + 16, out_channels=c, block_out_channels=(32, 64, 64),
                       layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    rows["unet2d_32_64_64"] = train_flops(unet, (torch.randn(4, c + 16, gh * p, gw * p), t * 1000))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a run folder (or anything `viz predict` takes)")
    ap.add_argument("--processes", default="flow,ddpm")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--sample-steps", type=int, default=24)
    ap.add_argument("--n", type=int, default=64, help="held-out images measured")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--json", default="benchmarks/results/stochastic_decoder.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wm = load_world_model(args.model)
    spec = wm.target_encoder.input_spec
    train = load_images(spec, args.train_images, dataset="fashion_mnist", split="train", seed=0)
    probe = load_images(spec, args.n, dataset="fashion_mnist", split="test", seed=2)
    mask_cfg = mask_config_of(args.model)
    boxes = sample_boxes(wm.grid_size, args.n, 2, mask_cfg)
    result = {"model": str(args.model), "args": vars(args),
              "train_gflop_per_image": {k: v / 1e9 for k, v in flop_table(wm, args.hidden, args.depth).items()}}
    print(json.dumps(result["train_gflop_per_image"]), flush=True)
    for process in args.processes.split(","):
        t0 = time.perf_counter()
        model, stats = train_stochastic_decoder(wm.target_encoder, train.images, steps=args.steps,
                                                batch_size=args.batch_size, hidden=args.hidden, depth=args.depth,
                                                process=process, mask_cfg=mask_cfg)
        m = measure_samples(wm, probe.images, boxes, model, k=args.k, steps=args.sample_steps)
        result[process] = {"train_seconds": stats.seconds, "total_seconds": time.perf_counter() - t0,
                           "stats": vars(stats), **m}
        print(process, json.dumps(result[process], indent=1), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
