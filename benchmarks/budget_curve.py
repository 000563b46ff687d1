"""The budget curve: fmnist-probe accuracy of the CPU default against training minutes (issue 21).

    python benchmarks/budget_curve.py --minutes 3 7 15 [--config fmnist_cpu] [--out runs/budget] [key=value ...]

For each budget M, runs ``ijepa train --minutes M`` (every schedule annealed over the steps that fit, measured on
this machine) into its own folder, then ``ijepa eval --protocol fmnist-probe --baselines ''``, and prints one
row per budget: steps, images, wall minutes of the training command, the probe accuracy. Writes
``budget_curve.json`` under ``--out``. Run it on an idle machine: the step count follows the speed measured at
the start of each run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[3, 7, 15, 30])
    ap.add_argument("--config", help="default: the CPU default's rung for this machine")
    ap.add_argument("--out", default="runs/budget")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    out = Path(args.out)
    ijepa = [sys.executable, "-m", "ijepa"]
    rows = []
    for m in args.minutes:
        run_dir = out / f"m{m:g}"
        t0 = time.perf_counter()
        run([*ijepa, "train", "--out", str(run_dir), "--minutes", f"{m:g}",
             *(["--config", args.config] if args.config else []), *args.overrides])
        wall = (time.perf_counter() - t0) / 60
        run([*ijepa, "eval", str(run_dir), "--protocol", "fmnist-probe", "--baselines", "", "--no-progress",
             "--json", str(run_dir / "eval.json")])
        summary = json.loads((run_dir / "summary.json").read_text())
        acc = json.loads((run_dir / "eval.json").read_text())["models"]["pretrained"]["fmnist-probe"]["accuracy"]
        rows.append({"minutes": m, "steps": summary["steps"], "images": summary["images_seen"],
                     "train_command_minutes": round(wall, 2), "fmnist_probe": acc,
                     "final_loss": summary["final_loss"], "precision": summary.get("precision")})
        print(json.dumps(rows[-1]), flush=True)
    (out / "budget_curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| budget (min) | steps | images | `ijepa train` wall (min) | fmnist-probe |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['minutes']:g} | {r['steps']} | {r['images']:,} | {r['train_command_minutes']:.2f} | "
              f"{100 * r['fmnist_probe']:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
