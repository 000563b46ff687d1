"""One prepared check for a lent GPU: at most 8 minutes on one H100/H200, no downloads, one JSON summary and a table.

    python benchmarks/prepare_fmnist.py                    # once, where the dataset is: shared/fmnist/ (learn)
    bash benchmarks/gpu_check.sh --out /tmp/gpu_check      # the full check (CUDA)
    python benchmarks/gpu_check.py --smoke --out /tmp/gc    # the same code on the CPU at tiny shapes (CI runs it)

Each section runs in its own process under a time box, so a crash, an out-of-memory or a time-out loses only that
section (its error is recorded in the JSON) and every section's peak memory is its own. A section writes what it
has measured so far to ``OUT/sections/NAME.json`` as it goes, so a time-out keeps the part that finished.

  env        torch, CUDA, device and CPU facts; the dense matmul peak in bf16 (MFU's denominator), tf32 and fp32,
             measured in this run
  train:*    the project's training step (``ijepa.train``) on ViT-B/16 and ViT-H/14 at 224 px, the reference's
             recipe and per-GPU batch (128; halved until it fits), eager and ``torch.compile``: images/s, step ms,
             peak memory, FLOPs per image (counted on the real step) and MFU against the measured bf16 peak
  maxbatch   the largest ViT-H/14 batch whose step fits (doubling, then bisection; two steps per try)
  precision  fp32 against bf16 autocast: the losses of 50 steps of a small model from the same weights, images
             and masks
  ddp        ``torchrun --standalone --nproc_per_node 1`` running ``ijepa train`` for a few steps (nccl; gloo on
             the CPU) on a synthetic image folder
  fsdp       the training step under FSDP2 (meta.parallel: fsdp) against DDP on one device: fp32 loss agreement
             over a few steps, bf16 images/s of each (gpu_check_fsdp.py)
  loader     the folder and shard loaders' images/s on synthetic ImageNet-size JPEGs with the machine's cores as
             workers, the worker path and ``data.gpu_augment``; nvjpeg batch decoding on the device
  learn      ``ijepa train --config fmnist_cpu`` on the device for 1 minute (a time limit; less when the section
             starts with less than its time box left), then the fmnist-probe accuracy of its encoder beside a
             random-init encoder's (gpu_check_learn.py). The images come from shared/fmnist/, which ``python
             benchmarks/prepare_fmnist.py`` fills and which travels with the working tree, else from
             /usr/share/datasets/fashion-mnist

The time boxes share the budget (--budget, default 450 s); a section that would start with less than its
minimum left is recorded as skipped. Sections run in the order above except that the two compiled ``train`` rows
run last: they are the slowest to start and the first to give up when time runs short. On a GPU they run one at a
time, each with the device to itself; the smoke run, which times nothing that matters, runs two at a time on one
core each (``--jobs``), as most of a section there is a process starting and importing torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# benchmarks/ is not a package: the sections' module, and the modules it imports, are found through this folder
from gpu_check_fsdp import sec_fsdp  # noqa: E402
from gpu_check_learn import sec_learn  # noqa: E402
from gpu_check_sections import SECTION_FNS, Recorder, Shapes, ddp_worker, smoke_shapes  # noqa: E402

# (name, time box s, minimum s to start it)
SECTIONS = [("env", 50, 10), ("train:0:eager", 60, 20), ("train:1:eager", 70, 20),
            ("maxbatch", 75, 20), ("precision", 50, 15), ("ddp", 60, 25), ("fsdp", 45, 20), ("loader", 80, 25),
            ("learn", 120, 60),
            ("train:0:compile", 110, 45), ("train:1:compile", 140, 60)]


# -------------------------------------------------------------------------------------------- the parent


def run_section(name: str, timeout: float, out: Path, smoke: bool, threads: int | None = None) -> dict:
    path = out / "sections" / f"{name.replace(':', '_')}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--section-out", str(path),
           "--timeout", str(timeout), *(["--smoke"] if smoke else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else None
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        status = "ok" if r.returncode == 0 else "error"
        err = r.stderr.strip().splitlines()[-1] if r.returncode and r.stderr.strip() else None
        tail = r.stderr[-3000:] if r.returncode else None
    except subprocess.TimeoutExpired:
        status, err, tail = "timeout", f"time box of {timeout:.0f} s reached", None
    res = json.loads(path.read_text()) if path.exists() else {}
    res.update(status=status, seconds=round(time.perf_counter() - t, 1))
    if err:
        res.update(error=err, stderr_tail=tail)
    return res


def mfu(res: dict) -> None:
    """MFU of each train row against the bf16 peak measured in the same run."""
    peak = res.get("env", {}).get("bf16_tflops")
    for key, row in res.items():
        if key.startswith("train:") and peak and row.get("achieved_tflops"):
            row["mfu"] = row["achieved_tflops"] / peak


def table(res: dict) -> str:
    lines = [f"{'section':<18}{'status':<9}{'s':>6}  figures"]
    for key, r in res.items():
        if key in ("shapes", "total_s"):
            continue
        figs = ""
        if key.startswith("train:") and "images_per_s" in r:
            figs = (f"{r['arch']}/{r['patch']} b{r['batch']}: {r['images_per_s']:.0f} img/s, {r['step_ms']:.0f} ms, "
                    f"peak {r['peak_mem_mib'] or 0:.0f} MiB, {r.get('gflop_per_image', 0):.0f} GFLOP/img, "
                    f"MFU {100 * r.get('mfu', float('nan')):.1f}%")
        elif key == "env" and "bf16_tflops" in r:
            figs = (f"{r.get('gpu', 'cpu')}, torch {r.get('torch')}, {r.get('usable_cores')} cores; matmul bf16 "
                    f"{r['bf16_tflops']:.3g} TFLOP/s, fp32 {r.get('fp32_tflops', float('nan')):.3g}")
        elif key == "maxbatch" and "largest_batch" in r:
            figs = (f"{r['arch']}/{r['patch']}: largest batch {r['largest_batch']}, "
                    f"peak {r.get('peak_mem_mib') or 0:.0f} MiB")
        elif key == "precision" and "last10_mean_rel_diff" in r:
            figs = (f"last-10 mean loss rel. diff {100 * r['last10_mean_rel_diff']:.2f}%, max per step "
                    f"{100 * r['max_rel_diff']:.2f}%, agree={r['agree']}")
        elif key == "ddp" and "steps" in r:
            figs = f"backend {r.get('backend')}, {r['steps']} steps, loss {r['final_loss']:.4f}"
        elif key == "fsdp" and "fsdp_images_per_s" in r:
            figs = (f"fp32 loss rel. diff vs DDP {r['max_rel_diff']:.1e}, bf16 {r['fsdp_images_per_s']:.0f} img/s "
                    f"(DDP {r['ddp_images_per_s']:.0f})")
        elif key == "loader":
            figs = ", ".join(f"{k.removesuffix('_images_per_s')} {v:.0f}" for k, v in r.items()
                             if k.endswith("_images_per_s")) + " img/s"
        elif key == "learn" and "probe_accuracy" in r:
            figs = (f"{r['steps']} steps in {r['minutes']:g} min: fmnist-probe {100 * r['probe_accuracy']:.2f}%, "
                    f"random-init {100 * r['random_accuracy']:.2f}%")
        if r.get("error"):
            figs = (figs + "; " if figs else "") + f"error: {r['error'][:120]}"
        lines.append(f"{key:<18}{r['status']:<9}{r['seconds']:>6.0f}  {figs}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json and the sections' files")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (gloo), same code paths")
    p.add_argument("--budget", type=float,
                   help="seconds for all sections (default 450; --smoke 1500, a guard against hangs only)")
    p.add_argument("--only", help="comma-separated section names (e.g. train:0:eager,loader)")
    p.add_argument("--jobs", type=int, help="sections run at a time (default 1; --smoke 2 where there are 2 cores, "
                                            "each section then on cores / jobs threads)")
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--section-out", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=60, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    sh = smoke_shapes() if args.smoke else Shapes()
    if args.section == "ddp-worker":
        return ddp_worker(args)
    if args.section:
        kind, *rest = args.section.split(":")
        extra = {"timeout": args.timeout}
        if kind == "train":
            extra.update(index=int(rest[0]), mode=rest[1])
        return {**SECTION_FNS, "learn": sec_learn, "fsdp": sec_fsdp}[kind](sh, Recorder(Path(args.section_out)), extra)

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run with --smoke for the CPU version of the same code")
    out = Path(args.out)
    (out / "sections").mkdir(parents=True, exist_ok=True)
    budget = args.budget or sh.budget_s
    wanted = set(args.only.split(",")) if args.only else None
    sections = [s for s in SECTIONS if (wanted is None or s[0] in wanted)
                and not (s[0].startswith("train:") and int(s[0].split(":")[1]) >= len(sh.train))]
    jobs = max(1, args.jobs or (min(2, os.cpu_count() or 1) if args.smoke else 1))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    t0 = time.perf_counter()

    def run(section: tuple[str, float, float]) -> dict:
        name, box, minimum = section
        box, minimum = box * sh.box_scale, minimum * sh.box_scale
        left = budget - (time.perf_counter() - t0)
        if left < minimum:
            return {"status": "skipped", "seconds": 0.0, "error": f"{left:.0f} s left of the budget"}
        r = run_section(name, min(box, left), out, args.smoke, threads)
        print(f"[{time.perf_counter() - t0:5.0f} s] {name}: {r['status']}", file=sys.stderr, flush=True)
        return r

    res: dict = {"shapes": asdict(sh)}
    with ThreadPoolExecutor(jobs) as pool:  # in SECTIONS' order; one at a time unless --jobs says otherwise
        res.update(zip([name for name, _, _ in sections], pool.map(run, sections)))
    res["total_s"] = round(time.perf_counter() - t0, 1)
    mfu(res)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    print(table(res))
    print(json.dumps({k: v for k, v in res.items() if k != "shapes"}, default=str))
    print(f"written: {out / 'gpu_check.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
