"""What a GPU's loader workers pay per image, and how many workers a GPU step needs.

    python benchmarks/loader.py                       # 96 synthetic ImageNet-size JPEGs, 3 interleaved rounds
    python benchmarks/loader.py --n 256 --rounds 5 --throughput-workers 2

Synthetic JPEGs of ImageNet's size and weight (500 x 375 and 375 x 500, about 110 KB at quality 90: 1/f-like
noise, which JPEG compresses about as well as photographs) are written to a temporary folder, and as tar shards
(``ijepa shards``). One process and one thread then times, per image, every piece a loader worker runs, rotating
through the pieces in interleaved rounds (the fastest round of each is kept, so a busy machine favours none):

- ``decode``: PIL (open + convert to RGB) and ``torchvision.io.decode_image``;
- the worker path (``make_pretrain_transform``, what the workers run without ``data.gpu_augment``): decode plus the
  I-JEPA ImageNet recipe (RandomResizedCrop 0.3-1.0 to 224, ToTensor, Normalize) and the full recipe (plus flip,
  colour jitter at strength 0.5 with random grayscale, blur);
- the GPU-augmentation path's workers (``data.gpu_augment``): decode and shrink to the canvas only;
- the same from tar shards (``ShardDataset``: tar read plus PIL decode plus the same transforms);
- the batched device call (``BatchAugment``) run on this CPU, per image, for reference: on a GPU it is a few
  kernels per batch.

From the per-image costs and the GPU step rates assumed in ``ASSUMED_RATES`` (their sources beside them), it
prints the loader workers (one core each) a GPU needs for each path. ``--throughput-workers N`` also measures a real
DataLoader with N workers through both paths (images/s). ``gpu_check.py`` reuses ``make_jpegs``, ``write_shards`` and
``loader_throughput``. Writes JSON to --json.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ijepa.data.datasets import ImageFolderDataset, collate_skip_corrupt
from ijepa.data.gpu_augment import BatchAugment, CanvasFolder, DecodeShrink, decode_file, default_max_size
from ijepa.data.loader import build_loader
from ijepa.data.shards.reader import ShardDataset, build_shard_loader
from ijepa.data.shards.writer import write_shards
from ijepa.data.transforms import make_pretrain_transform

IMAGE_SIZES = ((375, 500), (500, 375))  # (h, w): ImageNet's commonest, landscape and portrait
CROP = 224

# GPU training-step rates assumed for the worker table (images/s per GPU), until gpu_check.py measures them:
# - ViT-H/14 on an A100: the I-JEPA paper trains it for 300 epochs of ImageNet-1K (1,281,167 images) on 16 A100s
#   in under 72 hours (arXiv 2301.08243, section 1): at least 1,281,167 x 300 / (16 x 72 x 3600) = 92.7 images/s.
# - H100 against A100: 2.06x, NVIDIA NeMo's ViT-g/14 training throughput on one DGX node (1,428 against 693
#   samples/s for 8 GPUs; docs.nvidia.com/nemo-framework, "ViT ... Performance").
# - ViT-B/16: the same achieved FLOP/s as ViT-H/14 on that GPU, scaled by the step's FLOPs per image counted on
#   this project's step (torch FlopCounterMode, default masks, 224 px, predictor 12 x 384): ViT-H/14 835 GFLOP,
#   ViT-B/16 150 GFLOP per image (forward + backward of all three networks). Small models usually reach a lower
#   fraction of the peak than ViT-H, so this is an upper estimate of ViT-B/16's rate, hence of the workers it needs.
STEP_GFLOP = {"ViT-B/16": 149.9, "ViT-H/14": 835.0}
VITH_A100 = 1_281_167 * 300 / (16 * 72 * 3600)
H100_OVER_A100 = 1428 / 693
ASSUMED_RATES = {
    ("ViT-H/14", "A100"): VITH_A100,
    ("ViT-H/14", "H100"): VITH_A100 * H100_OVER_A100,
    ("ViT-B/16", "A100"): VITH_A100 * STEP_GFLOP["ViT-H/14"] / STEP_GFLOP["ViT-B/16"],
    ("ViT-B/16", "H100"): VITH_A100 * H100_OVER_A100 * STEP_GFLOP["ViT-H/14"] / STEP_GFLOP["ViT-B/16"],
}


# -------------------------------------------------------------------------------------------- the images


def synthetic_image(g: torch.Generator, h: int, w: int) -> Image.Image:
    """Noise at four scales plus pixel noise: about 110 KB as a 500 x 375 JPEG at quality 90, like ImageNet's."""
    x = torch.zeros(1, 3, h, w)
    for cells, amp in ((3, 1.0), (12, 0.5), (48, 0.3), (160, 0.2)):
        small = torch.randn(1, 3, max(2, cells * h // w), cells, generator=g)
        x += amp * F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    x += 0.3 * torch.randn(1, 3, h, w, generator=g)
    x = (x - x.mean()) / (4 * x.std()) + 0.5
    return Image.fromarray((x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())


def _write_one(args: tuple[str, int, int, int]) -> int:
    path, seed, h, w = args
    torch.set_num_threads(1)
    buf = io.BytesIO()
    synthetic_image(torch.Generator().manual_seed(seed), h, w).save(buf, "JPEG", quality=90)
    Path(path).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def make_jpegs(root: str | Path, n: int, classes: int = 10, sizes=IMAGE_SIZES, processes: int | None = None,
               seed: int = 0) -> Path:
    """``n`` synthetic JPEGs in ImageNet's layout, ``root/train/class_k/img_i.jpg``; returns root/train."""
    train = Path(root) / "train"
    jobs = []
    for i in range(n):
        folder = train / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = sizes[i % len(sizes)]
        jobs.append((str(folder / f"img_{i:06d}.jpg"), seed * 1_000_003 + i, h, w))
    processes = processes or min(len(os.sched_getaffinity(0)), 16)
    if processes > 1 and n > 16:
        with mp.get_context("fork").Pool(processes) as pool:
            pool.map(_write_one, jobs, chunksize=8)
    else:
        for job in jobs:
            _write_one(job)
    return train


# ------------------------------------------------------------------------------------------ per image


def worker_transforms() -> dict:
    crop = make_pretrain_transform(CROP, (0.3, 1.0))
    full = make_pretrain_transform(CROP, (0.3, 1.0), horizontal_flip=True, color_distortion=True,
                                   color_jitter_strength=0.5, gaussian_blur=True)
    return {"crop": crop, "full": full}


def per_image_pieces(train: Path, shards: Path) -> dict:
    """name -> a function of nothing that processes every image once (in this process) and returns the count."""
    folder = ImageFolderDataset(train)
    paths = [p for p, _ in folder.samples]
    tf = worker_transforms()
    canvas = DecodeShrink(default_max_size(CROP))
    gpu_folder = ImageFolderDataset(train, canvas, draft_size=2 * CROP)
    gpu_tv, gpu_pil = CanvasFolder(gpu_folder), CanvasFolder(gpu_folder, decoder="pil")

    def each(fn):
        def run():
            for i in range(len(paths)):
                fn(i)
            return len(paths)
        return run

    def shard_pass(transform):
        def run():
            return sum(1 for _ in ShardDataset(shards, transform, shuffle=False))
        return run

    return {
        "decode PIL": each(lambda i: folder.read(i)),
        "decode torchvision": each(lambda i: decode_file(paths[i])),
        "worker path, I-JEPA recipe (crop)": each(lambda i: tf["crop"](folder.read(i)[0])),
        "worker path, full recipe": each(lambda i: tf["full"](folder.read(i)[0])),
        "gpu_augment workers (torchvision decode)": each(lambda i: gpu_tv[i]),
        "gpu_augment workers (PIL decode)": each(lambda i: gpu_pil[i]),
        "shards: worker path, I-JEPA recipe (crop)": shard_pass(tf["crop"]),
        "shards: worker path, full recipe": shard_pass(tf["full"]),
        "shards: gpu_augment workers (PIL decode)": shard_pass(canvas),
    }


def batched_call_pieces(train: Path, batch: int = 32) -> dict:
    """The device's share of the GPU-augmentation path, run on this CPU: per image of a batch of canvases."""
    ds = CanvasFolder(ImageFolderDataset(train, DecodeShrink(default_max_size(CROP))))
    items = [ds[i % len(ds)] for i in range(batch)]
    canvases, sizes = torch.stack([c for (c, _), _ in items]), torch.stack([s for (_, s), _ in items])
    crop = BatchAugment(CROP)
    full = BatchAugment(CROP, horizontal_flip=True, color_distortion=True, color_jitter_strength=0.5,
                        gaussian_blur=True)
    g = torch.Generator().manual_seed(0)
    return {"batched call on this CPU, I-JEPA recipe": lambda: (crop(canvases, sizes, g), batch)[1],
            "batched call on this CPU, full recipe": lambda: (full(canvases, sizes, g), batch)[1]}


def time_pieces(pieces: dict, rounds: int) -> dict[str, float]:
    """ms per image of each piece: interleaved rounds, the fastest round kept."""
    best = {k: math.inf for k in pieces}
    for _ in range(rounds):
        for name, fn in pieces.items():
            t = time.perf_counter()
            n = fn()
            best[name] = min(best[name], (time.perf_counter() - t) * 1e3 / n)
    return best


# ---------------------------------------------------------------------------------------- a real loader


def loader_throughput(train: Path, shards: Path | None, workers: int, batch: int = 32, gpu_augment: bool = False,
                      device: str = "cpu", epochs: int = 2, source: str = "folder") -> float:
    """Images/s of a DataLoader with ``workers`` processes over the folder (or the shards), after its first batch,
    including the batched device call when ``gpu_augment`` and the copy to ``device``."""
    dev = torch.device(device)
    pin = dev.type == "cuda"
    if gpu_augment:
        tf = DecodeShrink(default_max_size(CROP))
        aug = BatchAugment(CROP)
    else:
        tf = worker_transforms()["crop"]
    if source == "shards":
        ds = ShardDataset(shards, tf)
        loader = build_shard_loader(ds, batch, num_workers=workers, pin_memory=pin)
        sampler = ds
    else:
        ds = CanvasFolder(ImageFolderDataset(train, tf, draft_size=2 * CROP)) if gpu_augment else \
            ImageFolderDataset(train, tf)
        loader, sampler = build_loader(ds, batch, num_workers=workers, pin_memory=pin)
    assert loader.collate_fn is collate_skip_corrupt
    count, t0 = 0, None
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for images, _, _ in loader:
            if gpu_augment:
                canvases, sizes = images
                x = aug(canvases.to(dev, non_blocking=True), sizes, torch.Generator().manual_seed(count))
            else:
                x = images.to(dev, non_blocking=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if t0 is None:  # start the clock after the first batch: worker start-up is not throughput
                t0 = time.perf_counter()
                continue
            count += x.shape[0]
    return count / (time.perf_counter() - t0) if count else float("nan")


# ------------------------------------------------------------------------------------------- the table


def worker_table(ms: dict[str, float]) -> list[dict]:
    """Workers (one core each) a GPU needs: its images/s x a worker's seconds per image, rounded up."""
    paths = {"worker path, I-JEPA recipe": ms["worker path, I-JEPA recipe (crop)"],
             "worker path, full recipe": ms["worker path, full recipe"],
             "gpu_augment": ms["gpu_augment workers (torchvision decode)"]}
    rows = []
    for (model, gpu), rate in ASSUMED_RATES.items():
        rows.append({"model": model, "gpu": gpu, "assumed_images_per_s": rate,
                     **{name: math.ceil(rate * cost / 1e3) for name, cost in paths.items()}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=96, help="synthetic JPEGs (the timing passes read each once per round)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--throughput-workers", type=int, default=0,
                   help="also time a real DataLoader with this many workers (0: skip)")
    p.add_argument("--json", default="benchmarks/results/loader.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        train = make_jpegs(tmp, args.n)
        kb = statistics.mean(f.stat().st_size for f in train.rglob("*.jpg")) / 1e3
        shards = Path(tmp) / "shards"
        write_shards(train, shards, max_count=max(16, args.n // 4))
        ms = time_pieces({**per_image_pieces(train, shards), **batched_call_pieces(train)}, args.rounds)
        thr = {}
        if args.throughput_workers:
            for src in ("folder", "shards"):
                for gpu in (False, True):
                    thr[f"{src}, {'gpu_augment' if gpu else 'worker path'}"] = loader_throughput(
                        train, shards, args.throughput_workers, batch=max(1, min(32, args.n // 4)),
                        gpu_augment=gpu, source=src)
    print(f"{args.n} synthetic JPEGs, {kb:.0f} KB on average, one thread, fastest of {args.rounds} rounds")
    for name, v in ms.items():
        print(f"  {name:<48} {v:7.2f} ms/image  ({1e3 / v:6.0f} images/s per core)")
    side = ms["worker path, I-JEPA recipe (crop)"] / ms["gpu_augment workers (torchvision decode)"]
    side_full = ms["worker path, full recipe"] / ms["gpu_augment workers (torchvision decode)"]
    print(f"worker path / gpu_augment workers, same run: {side:.2f}x (I-JEPA recipe), {side_full:.2f}x (full recipe)")
    table = worker_table(ms)
    print("\nworkers a GPU needs (assumed step rates; see ASSUMED_RATES)")
    print(f"{'model':<10}{'GPU':<6}{'img/s':>7}{'I-JEPA recipe':>15}{'full recipe':>13}{'gpu_augment':>13}")
    for r in table:
        print(f"{r['model']:<10}{r['gpu']:<6}{r['assumed_images_per_s']:>7.0f}{r['worker path, I-JEPA recipe']:>15}"
              f"{r['worker path, full recipe']:>13}{r['gpu_augment']:>13}")
    for name, v in thr.items():
        print(f"DataLoader, {args.throughput_workers} workers, {name}: {v:.0f} images/s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"n": args.n, "mean_kb": kb, "rounds": args.rounds, "ms_per_image": ms,
                                           "ratio_crop": side, "ratio_full": side_full, "workers": table,
                                           "throughput": thr, "cpu_count": os.cpu_count()}, indent=2))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
