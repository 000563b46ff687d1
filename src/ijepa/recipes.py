"""Planning a run for this machine before it trains: the CPU default's ladder, and the ``ijepa train`` command.

``ijepa train`` with no ``--config`` runs the CPU default: the first rung of the ladder (``ladder.py``) that this
machine can afford. The planner picks the rung from what the hardware runs natively (bf16 or not), then, for a
rung with ``min_fit``, times a few of its training steps on synthetic images: where its time limit would fit less
than that share of its configured steps, the next rung runs instead. A measurement taken while other programs
used the CPU says nothing of the machine, so a busy machine keeps the rung its hardware gets (and the run's timed
horizon fits whatever the load leaves). The outcome is a config: ``train(cfg, out)`` knows nothing of rungs.
A run folder given with ``--out`` remembers the rung it settled on (``rung.json``), so re-running the command
resumes that rung's run instead of measuring again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config, load_config
from .device import bf16_supported, resolve_device
from .io import atomic_write_json
from .ladder import LADDER, Rung
from .masks import MultiBlockMaskSampler
from .precision import matmul_gflops, resolve_precision
from .spec import InputSpec
from .train.horizon import Horizon, process_started
from .train.ijepa import IJEPA
from .train.inputs import require_data
from .train.loop import TrainState, train, train_step
from .train.schedules import Schedules

# Other programs using more than this many cores while the planner times a rung make its figure meaningless.
BUSY_CORES = 0.5


@dataclass(frozen=True)
class StepTiming:
    seconds: float       # one training step, after a warm-up step per mask draw
    others_cores: float  # CPU cores other programs used meanwhile (from /proc/stat; 0 where unknown)


def native_rung(device: str = "auto") -> tuple[Rung, str]:
    """The rung this machine's hardware gets, and why (with the matmul throughput where bf16 is emulated)."""
    dev = resolve_device(str(device))
    native = bf16_supported(dev)
    what = f"this {dev.type} {'runs' if native else 'has no native units for'} bf16"
    if dev.type == "cpu" and not native:  # the reason, in numbers, where it decides against bf16
        fp32, bf16 = matmul_gflops(torch.float32, dev, budget_s=0.1), matmul_gflops(torch.bfloat16, dev, budget_s=0.1)
        what += f" (matmul measured: bf16 {bf16:.1f} GFLOP/s, fp32 {fp32:.1f} GFLOP/s)"
    return (LADDER[0] if native else LADDER[1]), what


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy ticks of the whole machine, ticks of this process), or None where /proc is not there."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(map(float, fields)) - float(fields[3]) - float(fields[4])  # all but idle and iowait
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, float(own[11]) + float(own[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def others_cores(seconds: float = 0.5) -> float:
    """CPU cores other programs used over the next ``seconds`` (0 where /proc is not there)."""
    t0, ticks0 = time.perf_counter(), _cpu_ticks()
    time.sleep(seconds)
    ticks1 = _cpu_ticks()
    if ticks0 is None or ticks1 is None:
        return 0.0
    hz = 100.0  # USER_HZ: the tick of /proc/stat on every Linux
    return max(0.0, ((ticks1[0] - ticks0[0]) - (ticks1[1] - ticks0[1])) / hz / (time.perf_counter() - t0))


def time_rung(cfg: Config, draws: int = 2, repeats: int = 3) -> StepTiming:
    """Seconds per training step of ``cfg``'s model, precision and batch on this machine (synthetic images), and
    how busy the machine was meanwhile. Each mask draw's shapes run once untimed, then ``repeats`` times timed, and
    the fastest of those counts: a step is only ever slowed (by what a first step allocates, by kernels built for
    a new shape, by another program), and a run's first steps are its slowest, so the mean of a few steps judged
    the machine by its warm-up and stepped a machine down whose epoch fitted its limit."""
    device = resolve_device(cfg.meta.device)
    if cfg.meta.threads:
        torch.set_num_threads(cfg.meta.threads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        d = cfg.data
        model = IJEPA.from_config(cfg, InputSpec(d.crop_size, d.in_chans, (0.5,) * d.in_chans, (0.5,) * d.in_chans))
        model.to(device)
        optimizer = model.configure_optimizer(cfg.optimization, device.type)
        precision = resolve_precision(cfg.meta.precision, device)
        schedules = Schedules.from_config(cfg.optimization, 1, Horizon(100))
        state = TrainState(model, model, optimizer, precision.grad_scaler(), schedules, precision)
        masks = MultiBlockMaskSampler(model.grid_size, cfg.mask)
        images = torch.randn(d.batch_size, d.in_chans, d.crop_size, d.crop_size, device=device)
        ticks0, seconds = _cpu_ticks(), 0.0
        t0 = time.perf_counter()
        for draw in range(draws):
            enc, pred = masks(d.batch_size, torch.Generator().manual_seed(draw))
            enc, pred = [m.to(device) for m in enc], [m.to(device) for m in pred]
            train_step(state, images, enc, pred, 0)
            fastest = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                train_step(state, images, enc, pred, 0)
                fastest = min(fastest, time.perf_counter() - t)
            seconds += fastest
        wall, ticks1 = time.perf_counter() - t0, _cpu_ticks()
    others = 0.0
    if ticks0 is not None and ticks1 is not None:
        hz = 100.0  # USER_HZ: the tick of /proc/stat on every Linux
        others = max(0.0, ((ticks1[0] - ticks0[0]) - (ticks1[1] - ticks0[1])) / hz / wall)
    return StepTiming(seconds / draws, others)


def fits(rung: Rung, timing: StepTiming, steps_per_epoch: int) -> tuple[int, int]:
    """(steps that fit the rung's own time limit at the measured step time, the steps it is shipped with). The
    rung is judged as shipped: a user's ``--minutes`` or length limits the run of the rung this machine gets, it
    does not pick another."""
    opt = load_config(rung.config).optimization
    configured = opt.total_steps or opt.epochs * steps_per_epoch
    if opt.minutes is None:
        return configured, configured
    return min(configured, int(opt.minutes * 60 / timing.seconds)), configured


def plan_cpu_default(out: str | None, overrides: list[str], *, timer: Callable[[Config], StepTiming] = time_rung,
                     load: Callable[[], float] = others_cores, steps_per_epoch: int = 468) -> tuple[Config, Path]:
    """The CPU default's config for this machine and its run folder, saying which rung and why. ``load`` says how
    many cores other programs use now: on a busy machine the rung is kept without timing it (the timing would say
    nothing, and take several times as long). ``steps_per_epoch``: the rungs' (Fashion-MNIST's 60,000 images in
    batches of 128)."""
    cfgs = {r.config: load_config(r.config, overrides) for r in LADDER}  # a bad override fails before anything runs
    require_data(cfgs[LADDER[0].config].data)  # and a missing dataset: the rungs share their data keys
    settled = Path(out) / "rung.json" if out else None
    if settled is not None and settled.is_file():
        name = json.loads(settled.read_text()).get("rung")
        rung, why = next(r for r in LADDER if r.config == name), f"{settled} says this run was started with it"
        print(f"CPU default: {rung.config}, because {why}", flush=True)
    else:
        rung, why = native_rung()
        print(f"CPU default: {rung.config}, because {why}; --config NAME runs another", flush=True)
        while rung.min_fit is not None:
            busy = load()
            if busy > BUSY_CORES:
                why = f"other programs use {busy:.1f} cores, so a timing would say nothing of this machine; kept"
                print(f"CPU default: {rung.config}: {why}", flush=True)
                break
            timing = timer(cfgs[rung.config])
            n, configured = fits(rung, timing, steps_per_epoch)
            if n >= rung.min_fit * configured:
                break
            if timing.others_cores > BUSY_CORES:
                why = (f"other programs used {timing.others_cores:.1f} cores while it was timed "
                       f"({timing.seconds:.2f} s a step), so the timing says nothing of this machine; kept")
                print(f"CPU default: {rung.config}: {why}", flush=True)
                break
            lower = LADDER[LADDER.index(rung) + 1]
            why = (f"{rung.config} was too slow here ({timing.seconds:.2f} s a step measured: its "
                   f"{load_config(rung.config).optimization.minutes:g} minutes fit about {n} of its {configured} "
                   f"steps, under the {rung.min_fit:.0%} it needs)")
            rung = lower
            print(f"CPU default: {rung.config}, because {why}", flush=True)
    cfg = cfgs[rung.config]
    folder = Path(out or cfg.logging.folder or f"runs/{rung.config}")
    cfg.logging.folder = str(folder)
    if settled is not None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(settled, {"rung": rung.config, "because": why})
    return cfg, folder


def train_command(config: str | None, out: str | None, overrides: list[str]) -> dict:
    """``ijepa train``: the named config (or the CPU default's rung for this machine), trained into ``out``. A time
    limit counts from the process's start: the planning before training is part of the minutes."""
    started = process_started()
    if config is None:
        cfg, folder = plan_cpu_default(out, overrides)
    else:
        cfg = load_config(config, overrides)
        folder = Path(out or cfg.logging.folder or f"runs/{Path(config).stem}")
        cfg.logging.folder = str(folder)
    return train(cfg, folder, started=started)
