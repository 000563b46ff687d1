"""``ijepa viz curves``: a run's loss, schedules and collapse monitors against the training step.

Reads the run folder's ``log.csv`` (one row per step) and, when present, ``monitor.csv`` (collapse checks:
target feature std, RankMe, and online k-NN accuracy when the run logged it). A resumed run may have logged
some steps twice; the last row of a step wins, as it is the one the resumed run continued from.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from ..errors import first_line
from . import VizError

# (column, title, y scale) of each panel, in order; absent or empty columns are skipped.
LOG_PANELS = (("loss", "training loss", "log"), ("lr", "learning rate", "linear"),
              ("wd", "weight decay", "linear"), ("momentum", "EMA momentum", "linear"))
MONITOR_PANELS = (("target_std", "target feature std (collapse → 0)", "log"),
                  ("rankme", "RankMe (effective rank)", "linear"),
                  ("knn", "online k-NN accuracy", "linear"))


class NotARunError(VizError, FileNotFoundError):
    """The folder is not a training run's (no log.csv): one line from the ``viz`` commands, and still the
    ``FileNotFoundError`` a caller may catch."""


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns as float arrays (NaN where a cell is empty or not a number), deduplicated by ``step``."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise VizError(f"cannot read {path}: {first_line(e)}") from None
    if not rows:
        return {}
    cols: dict[str, list[float]] = {k: [] for k in rows[0] if k is not None}
    for row in rows:
        for k in cols:
            try:
                cols[k].append(float(row.get(k) or "nan"))
            except ValueError:
                cols[k].append(math.nan)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    if "step" in out:
        step = out["step"]
        # last occurrence of each step, in step order
        _, last_rev = np.unique(step[::-1], return_index=True)
        keep = np.sort(len(step) - 1 - last_rev)
        keep = keep[np.argsort(step[keep], kind="stable")]
        out = {k: v[keep] for k, v in out.items()}
    return out


def read_run(run_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(log columns, monitor columns) of a run folder; the monitor dict is empty when there is no monitor.csv."""
    run = Path(run_dir)
    if not run.is_dir():
        raise NotARunError(f"{run} is not a run folder (expected the --out folder of `ijepa train`)")
    log_path = run / "log.csv"
    if not log_path.is_file():
        raise NotARunError(f"{run} has no log.csv: is it the --out folder of `ijepa train`?")
    log = _read_csv(log_path)
    if "step" not in log or not len(log["step"]):
        raise VizError(f"{log_path} has no rows with a step column")
    mon_path = run / "monitor.csv"
    return log, _read_csv(mon_path) if mon_path.is_file() else {}


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start), ignoring NaN."""
    ok = np.isfinite(y)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (c[idx] - c[lo]) / (n[idx] - n[lo])


def plot_curves(run_dir: str | os.PathLike, *, smooth: int | None = None, ncols: int = 4):
    """One panel per logged quantity against step: loss (raw and a trailing mean), lr, weight decay, EMA
    momentum, then target std, RankMe and k-NN accuracy from monitor.csv when present. Dotted vertical lines
    mark epoch boundaries. Returns a ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    log, mon = read_run(run_dir)
    step = log["step"]
    panels = [(log, *p) for p in LOG_PANELS if np.isfinite(log.get(p[0], np.array([np.nan]))).any()]
    panels += [(mon, *p) for p in MONITOR_PANELS if np.isfinite(mon.get(p[0], np.array([np.nan]))).any()]
    if not panels:
        raise VizError(f"{Path(run_dir) / 'log.csv'} has none of the columns plotted "
                       f"({', '.join(p[0] for p in LOG_PANELS + MONITOR_PANELS)}) with a number in it")
    nrows = math.ceil(len(panels) / max(1, ncols))
    ncols = math.ceil(len(panels) / nrows)  # balanced rows: 6 panels as 2 x 3, not 4 + 2
    fig = Figure(figsize=(3.6 * ncols, 2.8 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    epoch_starts = []
    if "epoch" in log:
        change = np.flatnonzero(np.diff(log["epoch"]) > 0) + 1
        epoch_starts = step[change].tolist()
    window = smooth or max(5, len(step) // 50)
    for ax, (data, key, title, yscale) in zip(axes.flat, panels):
        x, y = data["step"], data[key]
        ok = np.isfinite(y)
        if key == "loss":
            ax.plot(x[ok], y[ok], lw=0.5, alpha=0.35, color="tab:blue", label="per step")
            ax.plot(x, _smooth(y, window), lw=1.5, color="tab:blue", label=f"mean of {window}")
            ax.legend(fontsize=7, frameon=False)
            ax.set_title(f"{title}; last {np.nanmean(y[ok][-window:]):.4g}", fontsize=9)
        elif key == "knn":
            ax.plot(x[ok], 100 * y[ok], marker="o", ms=3, color="tab:green")
            ax.set_ylabel("%", fontsize=8)
            ax.set_title(f"{title}; last {100 * y[ok][-1]:.1f}%", fontsize=9)
        else:
            style = {"marker": "o", "ms": 3} if data is mon else {}
            ax.plot(x[ok], y[ok], lw=1.2, color="tab:orange" if data is mon else "tab:gray", **style)
            ax.set_title(f"{title}; last {y[ok][-1]:.4g}", fontsize=9)
        if yscale == "log" and (y[ok] > 0).all():
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # momentum 0.9995..1 reads better without "+1"
        for s in epoch_starts:
            ax.axvline(s, color="k", lw=0.6, ls=":", alpha=0.5)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.25)
    fig.suptitle(f"{Path(run_dir).resolve().name}: {len(step)} steps"
                 + (f", {len(epoch_starts) + 1} epochs (dotted lines)" if epoch_starts else ""), fontsize=10)
    return fig
