"""Run a command while other programs keep the CPU busy for part of it: what a laptop or a shared machine does
to a timed run.

    python benchmarks/busy.py --start 0 --seconds 60 -- ijepa train --minutes 6 --out runs/busy-start
    python benchmarks/busy.py --start 180 -- ijepa train --minutes 6 --out runs/busy-late   # busy to the end
    python benchmarks/busy.py --cores 0 -- ijepa train --minutes 6 --out runs/quiet          # the quiet reference

One busy loop per core (``--cores``, default every core) spins from ``--start`` seconds after the command starts
for ``--seconds`` (default: until the command ends). Prints the command's wall time and, where it wrote a run
folder (``--out``), the steps it trained and the plan's record.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path


def spin() -> None:
    while True:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", type=float, default=0.0, help="seconds after the command starts (default 0)")
    p.add_argument("--seconds", type=float, help="how long the loops spin (default: until the command ends)")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="busy loops (default: one per core)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = p.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    loops: list[mp.Process] = []
    started = stopped = args.cores == 0  # no loops: nothing to start or stop
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if not started and now >= args.start:
            loops, started = [mp.Process(target=spin, daemon=True) for _ in range(args.cores)], True
            for loop in loops:
                loop.start()
            print(f"busy: {args.cores} loops from {now:.1f} s", file=sys.stderr, flush=True)
        if started and not stopped and args.seconds is not None and now >= args.start + args.seconds:
            for loop in loops:
                loop.terminate()
            stopped = True
            print(f"busy: stopped at {now:.1f} s", file=sys.stderr, flush=True)
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    for loop in loops:
        loop.terminate()
    result = {"command": " ".join(cmd), "rc": proc.returncode, "wall_s": round(wall, 1),
              "busy_from_s": args.start, "busy_for_s": args.seconds, "busy_loops": args.cores}
    out = cmd[cmd.index("--out") + 1] if "--out" in cmd else None
    if out and (Path(out) / "summary.json").is_file():
        summary = json.loads((Path(out) / "summary.json").read_text())
        result.update(steps=summary["steps"], final_loss=round(summary["final_loss"], 4))
        if (Path(out) / "horizon.json").is_file():
            result["replans"] = len(json.loads((Path(out) / "horizon.json").read_text())["record"]) - 1
    print(json.dumps(result))


if __name__ == "__main__":
    main()
