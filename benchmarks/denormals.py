"""Denormal floats and CPU step time: the same training run with and without flushing them to zero.

    python benchmarks/denormals.py [--steps 150] [--config fmnist_cpu_fp32] [key=value ...]

Trains ``--steps`` steps twice, each in a fresh subprocess (``meta.flush_denormal=false``, the reference, then
``true``), and prints the mean step time over each fifth of the run and each fifth's ratio against the reference:
without flushing, fp32 steps on the CPU slow down as training goes on (values below 1.2e-38 appear in the
activations and gradients, and x86 handles them in microcode). Both runs drop the config's time limit
(``optimization.minutes=null``): a slower run cut short by it would leave fifths of different steps to compare.
Run it under ``bash scripts/as-avx2.sh`` to see an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path


def run(flush: bool, steps: int, config: str, overrides: list[str], out: Path) -> list[float]:
    cmd = [sys.executable, "-m", "ijepa", "train", "--config", config, "--out", str(out),
           f"optimization.total_steps={steps}", "optimization.minutes=null",
           f"meta.flush_denormal={str(flush).lower()}",
           "logging.progress=false", "logging.online_knn=false", "logging.monitor_freq=0", *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out / "log.csv") as f:
        return [float(r["step_ms"]) for r in csv.DictReader(f)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--config", default="fmnist_cpu_fp32")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times = {flush: run(flush, args.steps, args.config, args.overrides, Path(tmp) / str(flush))
                 for flush in (False, True)}
    fifth = max(1, args.steps // 5)
    print(f"{args.config} {' '.join(args.overrides)}: mean step ms per fifth of {args.steps} steps")
    print(f"{'steps':>10} {'no flush (ref)':>15} {'flush':>8} {'speed-up':>9}")
    for i in range(0, args.steps, fifth):
        a, b = (sum(t[i:i + fifth]) / len(t[i:i + fifth]) for t in (times[False], times[True]))
        print(f"{i:>4}-{min(i + fifth, args.steps) - 1:<5} {a:>15.0f} {b:>8.0f} {a / b:>8.2f}x")
    a, b = sum(times[False]), sum(times[True])
    print(f"{'whole run':>10} {a / 1000:>14.1f}s {b / 1000:>7.1f}s {a / b:>8.2f}x")


if __name__ == "__main__":
    main()
