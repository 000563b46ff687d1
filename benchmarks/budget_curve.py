"""The budget curve: fmnist-probe accuracy of the CPU default against training minutes.

    python benchmarks/budget_curve.py --minutes 3 7 15 [--config fmnist_cpu] [--out runs/budget] [key=value ...]

For each budget M, runs ``ijepa train --minutes M`` into its own folder, then ``ijepa eval --protocol fmnist-probe
--baselines ''``, and prints one row per budget: steps, images, wall minutes of the training command, the probe
accuracy. Writes ``budget_curve.json`` under ``--out``.

``--minutes`` is a time limit: it never makes a run longer than its configured length (one epoch for the CPU
default's rungs). So that each point trains for its minutes, past the epoch where they allow, the script also
passes ``optimization.total_steps=N`` with N the steps M minutes hold at ``--fastest-step-ms`` a step, far faster
than any machine runs these recipes: the time limit, not the length, then ends every run, and every schedule is
annealed over the steps that fit. A length in steps (not a raised ``optimization.epochs``) keeps the recipe's
lr warm-up at its share of the run (warmup / epochs), as at the recipe's own length. An ``optimization.epochs``
or ``optimization.total_steps`` among the overrides replaces N (the run is then as long as it says, or as the
minutes allow). A row whose run reached N before its minutes says so: lower ``--fastest-step-ms``.

With no ``--config`` the CPU default's rung for this machine is chosen once, at its own length and time limit,
as ``ijepa train`` chooses it (``ijepa.recipes``), and every budget runs that rung: a run many times longer than
its rung's time limit allows would otherwise always step down the ladder. ``rung.json`` under ``--out`` keeps the
choice, so a re-run uses the same rung.

Run it on an idle machine: each run plans its steps from the speed it measures as it goes.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

LENGTH_KEYS = ("optimization.epochs=", "optimization.total_steps=")


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def cpu_default_rung(out: Path, overrides: list[str]) -> str:
    """The rung ``ijepa train`` would run here with these overrides, remembered in ``out/rung.json``."""
    from ijepa.recipes import plan_cpu_default  # imports torch: only when a rung is to be chosen

    # at the rung's own length and time limit, as the quick start chooses it
    plan_cpu_default(str(out), [o for o in overrides if not o.startswith((*LENGTH_KEYS, "optimization.minutes="))])
    return json.loads((out / "rung.json").read_text())["rung"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[3, 7, 15, 30])
    ap.add_argument("--config", help="default: the CPU default's rung for this machine")
    ap.add_argument("--out", default="runs/budget")
    ap.add_argument("--fastest-step-ms", type=float, default=10.0,
                    help="the configured length is the steps each budget holds at this step time (default 10 ms: "
                         "the CPU default's rungs take about a second a step on 2 cores)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = args.config or cpu_default_rung(out, args.overrides)
    own_length = any(o.startswith(LENGTH_KEYS) for o in args.overrides)
    ijepa = [sys.executable, "-m", "ijepa"]
    rows = []
    for m in args.minutes:
        run_dir = out / f"m{m:g}"
        length = [] if own_length else [f"optimization.total_steps={math.ceil(m * 60e3 / args.fastest_step_ms)}"]
        t0 = time.perf_counter()
        run([*ijepa, "train", "--out", str(run_dir), "--minutes", f"{m:g}", "--config", config,
             *length, *args.overrides])
        wall = (time.perf_counter() - t0) / 60
        run([*ijepa, "eval", str(run_dir), "--protocol", "fmnist-probe", "--baselines", "", "--no-progress",
             "--json", str(run_dir / "eval.json")])
        summary = json.loads((run_dir / "summary.json").read_text())
        acc = json.loads((run_dir / "eval.json").read_text())["models"]["pretrained"]["fmnist-probe"]["accuracy"]
        plan = json.loads((run_dir / "horizon.json").read_text())["record"] if summary["horizon"] == "timed" else []
        rows.append({"minutes": m, "config": config, "steps": summary["steps"], "images": summary["images_seen"],
                     "configured_steps": summary["configured_steps"],
                     "length_bound": summary["steps"] >= summary["configured_steps"],
                     "last_plan_step_s": plan[-1]["step_seconds"] if plan else None,
                     "train_command_minutes": round(wall, 2), "fmnist_probe": acc,
                     "final_loss": summary["final_loss"], "precision": summary.get("precision")})
        print(json.dumps(rows[-1]), flush=True)
        if rows[-1]["length_bound"] and not own_length:
            print(f"budget_curve: the {m:g}-minute run reached its configured {summary['configured_steps']} steps "
                  f"before its minutes ran out: lower --fastest-step-ms", file=sys.stderr, flush=True)
    (out / "budget_curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{config}\n| budget (min) | steps (last plan's step time) | images | `ijepa train` wall (min) "
          f"| fmnist-probe |\n|---|---|---|---|---|")
    for r in rows:
        tau = f" ({r['last_plan_step_s']:.3f} s)" if r["last_plan_step_s"] else ""
        print(f"| {r['minutes']:g} | {r['steps']}{tau} | {r['images']:,} | {r['train_command_minutes']:.2f} | "
              f"{100 * r['fmnist_probe']:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
