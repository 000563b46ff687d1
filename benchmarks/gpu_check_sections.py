"""The sections of benchmarks/gpu_check.py (its docstring says what each measures), each of which it runs in a
child process: the sizes they run at (:class:`Shapes`), the project's training step they time (:class:`Step`), and
the sections themselves (``SECTION_FNS``), each recording its results as it goes (:class:`Recorder`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from loader import loader_throughput, make_jpegs  # benchmarks/ is on sys.path: gpu_check.py puts it there
from train_step import matmul_peak

# The ddp section's torchrun starts the entry point's ``ddp-worker``, which reads the same command line.
ENTRY = Path(__file__).resolve().parent / "gpu_check.py"


@dataclass
class Shapes:
    """Everything that differs between the full check and --smoke: sizes only, never code paths."""

    device: str = "cuda"
    matmul_n: int = 8192
    train: list = field(default_factory=lambda: [("vit_base", 16, 224, 128), ("vit_huge", 14, 224, 128)])
    compile_backend: str = "inductor"
    warmup_steps: int = 3
    timed_steps: int = 10
    maxbatch: tuple = ("vit_huge", 14, 224)
    maxbatch_start: int = 128
    maxbatch_limit: int = 8192
    maxbatch_granularity: int = 32
    precision: tuple = ("vit_small", 16, 96, 64)
    precision_steps: int = 50
    ddp: tuple = ("vit_small", 16, 96, 32)
    ddp_steps: int = 5
    ddp_images: int = 256
    loader_images: int = 4096
    loader_batch: int = 128
    learn_minutes: float = 1.0  # the learn section's training time (gpu_check_learn.py), then its probes
    learn_overrides: list = field(default_factory=lambda: ["optimization.epochs=50"])  # the time limit ends it
    learn_probe_limit: int | None = None  # None: the fmnist-probe's own 10,000 + 10,000 images
    workers: int = max(1, len(os.sched_getaffinity(0)) - 1)
    budget_s: float = 450.0
    overrides: list = field(default_factory=list)  # config overrides every model here takes
    box_scale: float = 1.0  # time boxes x this (the smoke run's are guards against hangs on a busy CI machine)


def smoke_shapes() -> Shapes:
    return Shapes(device="cpu", matmul_n=256, train=[("vit_tiny", 8, 64, 4)], compile_backend="eager",
                  warmup_steps=1, timed_steps=2, maxbatch=("vit_tiny", 8, 64), maxbatch_start=2, maxbatch_limit=8,
                  maxbatch_granularity=1, precision=("vit_tiny", 8, 64, 4), precision_steps=5,
                  ddp=("vit_tiny", 8, 64, 4), ddp_steps=2, ddp_images=16, loader_images=16, loader_batch=4,
                  workers=1, budget_s=1500.0, box_scale=4.0, learn_minutes=0.5, learn_probe_limit=500,
                  learn_overrides=["optimization.epochs=1", "data.limit=256", "data.batch_size=32",
                                   "meta.model_name=vit_tiny", "meta.enc_depth=1", "meta.pred_depth=1",
                                   "logging.online_knn=false"],
                  overrides=["mask.min_keep=4", "meta.enc_depth=2", "meta.pred_depth=2", "meta.pred_emb_dim=96"])



# ------------------------------------------------------------------------------------------- the sections


class Recorder:
    """A section's results, written to its file after every update (a time-out keeps what was measured)."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def update(self, **kw) -> None:
        self.data.update(kw)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def reference_config(sh: Shapes, arch: str, patch: int, img: int, batch: int, extra: list[str] = ()):
    """The reference's ViT-H/14 recipe (its masks, optimiser, schedules) at another size and batch."""
    from ijepa.config import load_config
    return load_config("in1k_vith14_ep300", [f"meta.model_name={arch}", f"mask.patch_size={patch}",
                                             f"data.crop_size={img}", f"data.batch_size={batch}",
                                             "data.root_path=/unused", *sh.overrides, *extra])


class Step:
    """The project's training step (``IJEPA`` and ``train_step``, as ``train`` runs them), built from a config:
    ``step(images, masks, i)`` runs one."""

    def __init__(self, cfg, device: torch.device, dtype: str, compile_backend: str | None = None, seed: int = 0):
        from ijepa.masks import MultiBlockMaskSampler
        from ijepa.precision import Precision
        from ijepa.train.horizon import Horizon
        from ijepa.train.ijepa import IJEPA
        from ijepa.train.loop import TrainState
        from ijepa.train.schedules import Schedules

        torch.manual_seed(seed)
        c = cfg.data.crop_size
        spec = {"image_size": (c, c), "in_chans": 3, "mean": (0.5,) * 3, "std": (0.5,) * 3}
        self.model = IJEPA.from_config(cfg, spec).to(device)
        opt = self.model.configure_optimizer(cfg.optimization, device.type)
        forward = self.model.compiled(backend=compile_backend) if compile_backend else self.model
        # The dtype is fixed, not resolved: the check compares fp32 with bf16 and times bf16 as the reference
        # trains, whatever the policy would pick here (the --smoke run's CPU may emulate bf16).
        precision = Precision(dtype, device.type, "fixed by the check")
        # A run of 1000 steps per epoch over the config's epochs: the schedules' values at the few steps timed
        # here are those of early training (warm-up included), as in a real run.
        schedules = Schedules.from_config(cfg.optimization, 1000, Horizon(cfg.optimization.epochs * 1000))
        self.state = TrainState(self.model, forward, opt, precision.grad_scaler(), schedules, precision,
                                cfg.optimization.clip_grad)
        self.sampler = MultiBlockMaskSampler(self.model.grid_size, cfg.mask)
        self.device, self.crop = device, c
        self.params = sum(p.numel() for p in self.model.encoder.parameters())

    def masks(self, batch: int, seed: int):
        enc, pred = self.sampler(batch, torch.Generator().manual_seed(seed))
        return [t.to(self.device) for t in enc], [t.to(self.device) for t in pred]

    def images(self, batch: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, self.crop, self.crop, generator=g).to(self.device)

    def __call__(self, images: torch.Tensor, masks, i: int) -> torch.Tensor:
        from ijepa.train.loop import train_step
        return train_step(self.state, images, *masks, i)

    def free(self) -> None:
        self.state.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def sec_env(sh: Shapes, rec: Recorder, _: dict) -> None:
    dev = torch.device(sh.device)
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)), "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "platform": platform.platform()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=p.total_memory / 2**30, sm_count=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported(),
                    cudnn=torch.backends.cudnn.version(), nccl=str(torch.cuda.nccl.version()))
    rec.update(**info)
    sec_matmul(sh, rec)


def sec_matmul(sh: Shapes, rec: Recorder) -> None:
    dev = torch.device(sh.device)
    rec.update(n=sh.matmul_n, bf16_tflops=matmul_peak(torch.bfloat16, dev, sh.matmul_n) / 1e12)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        rec.update(tf32_tflops=matmul_peak(torch.float32, dev, sh.matmul_n) / 1e12)
        torch.backends.cuda.matmul.allow_tf32 = False
    rec.update(fp32_tflops=matmul_peak(torch.float32, dev, min(sh.matmul_n, 4096)) / 1e12)


def _count_flops(step: Step, images, masks) -> float:
    """FLOPs of one real step per image (the eager model: compiling changes how, not how much)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.autocast(step.device.type, torch.bfloat16):
        step.model(images, *masks).backward()
    step.free()
    return fc.get_total_flops() / images.shape[0]


def sec_train(sh: Shapes, rec: Recorder, args: dict) -> None:
    arch, patch, img, batch = sh.train[args["index"]]
    dev = torch.device(sh.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    compiled = args["mode"] == "compile"
    rec.update(arch=arch, patch=patch, img=img, mode=args["mode"], requested_batch=batch, oom_batches=[])
    while batch >= 1:
        try:
            cfg = reference_config(sh, arch, patch, img, batch)
            step = Step(cfg, dev, "bf16", sh.compile_backend if compiled else None)
            x, masks = step.images(batch), step.masks(batch, 0)
            rec.update(batch=batch, params=step.params, context_tokens=int(masks[0][0].shape[1]),
                       target_tokens=int(masks[1][0].shape[1]))
            t = time.perf_counter()
            for i in range(sh.warmup_steps):
                step(x, masks, i)
            sync(dev)
            rec.update(warmup_s=time.perf_counter() - t)
            times = []
            for i in range(sh.timed_steps):
                t = time.perf_counter()
                loss = step(x, masks, sh.warmup_steps + i)
                sync(dev)
                times.append(time.perf_counter() - t)
            step_s = statistics.median(times)
            rec.update(step_ms=step_s * 1e3, images_per_s=batch / step_s, peak_mem_mib=peak_mib(dev),
                       loss=float(loss))
            flops = _count_flops(step, x, masks)
            rec.update(gflop_per_image=flops / 1e9, achieved_tflops=flops * batch / step_s / 1e12)
            return
        except Exception as e:  # noqa: BLE001 - only out-of-memory is retried
            if not is_oom(e):
                raise
            rec.update(oom_batches=rec.data["oom_batches"] + [batch])
            del e
            step = x = masks = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            batch //= 2


def _fits(step: Step, batch: int) -> tuple[bool, float | None]:
    dev = step.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        x, masks = step.images(batch), step.masks(batch, batch)
        for i in range(2):
            step(x, masks, i)
        sync(dev)
        return True, peak_mib(dev)
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        return False, None
    finally:
        x = masks = None
        step.free()


def sec_maxbatch(sh: Shapes, rec: Recorder, _: dict) -> None:
    arch, patch, img = sh.maxbatch
    dev = torch.device(sh.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    step = Step(reference_config(sh, arch, patch, img, sh.maxbatch_start), dev, "bf16")
    rec.update(arch=arch, patch=patch, img=img, tries=[], limit=sh.maxbatch_limit)
    ok, bad, b = 0, None, sh.maxbatch_start
    while bad is None and b <= sh.maxbatch_limit:  # double until a step does not fit
        fits, mem = _fits(step, b)
        rec.update(tries=rec.data["tries"] + [[b, fits, mem]])
        if fits:
            ok, b = b, b * 2
            rec.update(largest_batch=ok, peak_mem_mib=mem)
        else:
            bad = b
    while bad is not None and bad - ok > sh.maxbatch_granularity:  # then bisect
        mid = (ok + bad) // 2
        fits, mem = _fits(step, mid)
        rec.update(tries=rec.data["tries"] + [[mid, fits, mem]])
        if fits:
            ok = mid
            rec.update(largest_batch=ok, peak_mem_mib=mem)
        else:
            bad = mid
    rec.update(largest_batch=ok, bounded_by_limit=bad is None)


def sec_precision(sh: Shapes, rec: Recorder, _: dict) -> None:
    """Two runs of the same small model from the same weights over the same images and masks: fp32 (no tf32)
    and bf16 autocast."""
    arch, patch, img, batch = sh.precision
    dev = torch.device(sh.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = reference_config(sh, arch, patch, img, batch, ["optimization.warmup=1", "optimization.epochs=2"])
    losses = {}
    for name in ("fp32", "bf16"):
        step = Step(cfg, dev, name, seed=0)
        # smooth images: a random low-resolution field upsampled, so there is something to predict
        g = torch.Generator().manual_seed(1)
        low = torch.randn(sh.precision_steps, batch, 3, max(2, img // 16), max(2, img // 16), generator=g)
        out = []
        for i in range(sh.precision_steps):
            x = torch.nn.functional.interpolate(low[i], size=(img, img), mode="bicubic").to(dev)
            out.append(step(x, step.masks(batch, 100 + i), i))
        losses[name] = [float(v) for v in out]
        rec.update(**{f"{name}_losses": losses[name]})
    a, b = torch.tensor(losses["fp32"]), torch.tensor(losses["bf16"])
    rel = (a - b).abs() / a.abs().clamp_min(1e-12)
    k = min(10, len(a))
    last = abs(float(a[-k:].mean() - b[-k:].mean())) / abs(float(a[-k:].mean()))
    rec.update(max_abs_diff=float((a - b).abs().max()), max_rel_diff=float(rel.max()),
               mean_rel_diff=float(rel.mean()), last10_mean_rel_diff=last, agree=bool(last < 0.05),
               criterion="the mean loss of the last 10 steps within 5%")


def _tiny_folder(root: Path, n: int, size: int) -> None:
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        d = root / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size + size // 4),
                                            mode="bicubic").clamp(0, 1)
        Image.fromarray((x[0].permute(1, 2, 0) * 255).byte().numpy()).save(d / f"{i}.jpg", quality=90)


def sec_ddp(sh: Shapes, rec: Recorder, args: dict) -> None:
    """``ijepa train`` under torchrun, one process, through gpu_check.py's ``ddp-worker`` (which joins the process
    group the way ``train`` does, records its backend, then calls ``train``)."""
    arch, patch, img, batch = sh.ddp
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_ddp_"))
    try:
        _tiny_folder(tmp / "data", sh.ddp_images, img + img // 2)
        overrides = [f"meta.model_name={arch}", "meta.enc_depth=2", "meta.pred_depth=2", f"mask.patch_size={patch}",
                     f"data.crop_size={img}", f"data.batch_size={batch}", f"data.root_path={tmp}",
                     "data.image_folder=data", f"data.num_workers={min(2, sh.workers)}", "optimization.epochs=1",
                     "optimization.warmup=0", f"optimization.max_steps={sh.ddp_steps}", "logging.progress=false",
                     "meta.load_checkpoint=false", f"meta.device={sh.device}", "mask.min_keep=4", *sh.overrides]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(ENTRY), "--section", "ddp-worker", "--section-out", str(rec.path),
               "--out", str(tmp / "run"), *(["--smoke"] if sh.device == "cpu" else []), "--", *overrides]
        rec.update(command=" ".join(cmd[2:]))
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, args["timeout"] - 5),
                           env={**os.environ, "OMP_NUM_THREADS": "2"})
        rec.data = json.loads(rec.path.read_text()) if rec.path.exists() else rec.data
        rec.update(returncode=r.returncode, seconds=time.perf_counter() - t)
        if r.returncode:
            raise RuntimeError(f"torchrun exited {r.returncode}: {r.stderr[-2000:]}")
        summary = json.loads((tmp / "run" / "summary.json").read_text())
        rec.update(**{k: summary.get(k) for k in ("steps", "final_loss", "world_size", "device", "images_per_s")})
        if not (summary["steps"] == sh.ddp_steps and math.isfinite(summary["final_loss"])):
            raise RuntimeError(f"unexpected summary: {summary}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ddp_worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from ijepa.config import load_config
    from ijepa.train import distributed as D
    from ijepa.train.loop import train

    cfg = load_config("in1k_vith14_ep300", args.overrides)
    info = D.init_distributed(torch.device(cfg.meta.device).type)
    rec = Recorder(Path(args.section_out))
    rec.update(process_group=dist.is_initialized(), backend=dist.get_backend() if dist.is_initialized() else None,
               rank=info.rank, env_world_size=int(os.environ.get("WORLD_SIZE", "0")))
    train(cfg, args.out)


def sec_loader(sh: Shapes, rec: Recorder, _: dict) -> None:
    dev = torch.device(sh.device)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_loader_"))
    try:
        from ijepa.data.shards.writer import write_shards
        t = time.perf_counter()
        train = make_jpegs(tmp, sh.loader_images, processes=sh.workers + 1)
        shards = tmp / "shards"
        write_shards(train, shards, max_count=max(16, sh.loader_images // 16))
        rec.update(images=sh.loader_images, workers=sh.workers, batch=sh.loader_batch,
                   mean_kb=statistics.mean(f.stat().st_size for f in train.rglob("*.jpg")) / 1e3,
                   setup_s=time.perf_counter() - t)
        for source in ("folder", "shards"):
            for gpu in (False, True):
                key = f"{source}_{'gpu_augment' if gpu else 'worker_path'}_images_per_s"
                rec.update(**{key: loader_throughput(train, shards, sh.workers, sh.loader_batch, gpu_augment=gpu,
                                                     device=sh.device, epochs=1, source=source)})
        if dev.type == "cuda":
            rec.update(nvjpeg_images_per_s=_nvjpeg_rate(train, sh.loader_batch))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _nvjpeg_rate(train: Path, batch: int) -> float:
    from torchvision.io import decode_jpeg, read_file
    data = [read_file(str(p)) for p in sorted(train.rglob("*.jpg"))[: batch * 4]]
    decode_jpeg(data[:batch], device="cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(data), batch):
        decode_jpeg(data[i:i + batch], device="cuda")
    torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - t)


SECTION_FNS = {"env": sec_env, "train": sec_train, "maxbatch": sec_maxbatch,
               "precision": sec_precision, "ddp": sec_ddp, "loader": sec_loader}
