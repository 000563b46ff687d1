"""What a run writes besides its checkpoints: ``log.csv`` (one row per step), ``monitor.csv`` (one row per
collapse check), the progress bar, ``config.yaml`` and ``summary.json``; and what it sends to the experiment
trackers (``logging.tracker``: W&B, MLflow, TensorBoard; ``trackers.py``).

Crash-consistent: the CSVs are only appended to, one flushed batch of whole rows at a time, and at every start
they are read back, repaired and cut to the checkpoint being resumed from, then replaced atomically — so a kill
at any moment (mid-row, mid-rewrite, before the header was written) leaves files the next start reads, and after
a resume each step appears once. ``config.yaml`` and ``summary.json`` are replaced atomically; a start removes the
last process's ``summary.json`` (it describes a run that is going on again) and records a resume's config change
(``runfolder.py``). No space left while writing any of them is one ``DiskFullError``.

Losses stay on the device until :meth:`RunLog.flush` (every ``log_freq`` steps, before each checkpoint and at the
end): one host sync per log interval, not per step. Every rank flushes (the losses are averaged over ranks);
only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import Config, save_config
from ..errors import NonFiniteLossError
from ..io import atomic_write_json, atomic_write_text
from . import distributed as D
from .runfolder import no_space, record_config_change
from .schedules import Schedules
from .trackers import Trackers, monitor_metrics, row_metrics

LOG_FIELDS = ["epoch", "step", "loss", "lr", "wd", "momentum", "ctx_tokens", "tgt_tokens", "step_ms",
              "images_per_s", "skipped"]
MONITOR_FIELDS = ["epoch", "step", "target_std", "rankme", "knn"]


def step_row(epoch: int, step: int, schedules: Schedules, masks_enc: list[torch.Tensor],
             masks_pred: list[torch.Tensor], seconds: float, images: int, skipped: int) -> dict[str, Any]:
    """log.csv's row for one step, but its loss (read later, see :meth:`RunLog.flush`)."""
    return {"epoch": epoch, "step": step, "lr": f"{schedules.lr_at(step):.6g}", "wd": f"{schedules.wd_at(step):.6g}",
            "momentum": f"{schedules.momentum_at(step):.6g}", "ctx_tokens": masks_enc[0].shape[1],
            "tgt_tokens": masks_pred[0].shape[1], "step_ms": f"{seconds * 1e3:.1f}",
            "images_per_s": f"{images / seconds:.1f}", "skipped": skipped}


def read_rows(path: Path, fields: list[str]) -> list[dict[str, str]]:
    """The whole rows of a CSV this module wrote, whatever a crash left: a missing or empty file, a lost or
    repeated header, a torn last line (no newline, or too few fields) are all tolerated; a step logged twice
    keeps its last row. Ordered by step."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # torn mid-write
    by_step: dict[int, dict[str, str]] = {}
    for values in csv.reader(lines):
        if len(values) != len(fields) or values == fields:
            continue
        row = dict(zip(fields, values))
        try:
            by_step[int(row["step"])] = row
        except ValueError:
            continue
    return [by_step[s] for s in sorted(by_step)]


def rewrite_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def stale_temp_files(out: Path) -> list[Path]:
    """Temporary files (``io.atomic_open``'s ``.<name>.<random>.tmp``) a kill mid-write left in the run folder."""
    return sorted(out.glob(".*.tmp"))


class RunLog:
    """The run's logs from ``start_step`` (0: a fresh run, whose old logs are replaced) to ``total_steps``;
    ``config_change``: what a resume changed (``runfolder.config_change``), recorded beside ``config.yaml``."""

    def __init__(self, out: Path, cfg: Config, *, is_main: bool, start_step: int, total_steps: int,
                 steps_per_epoch: int, checkpoint_name: str, last_loss: float = math.nan,
                 config_change: dict | None = None):
        self.out, self.is_main, self.checkpoint_name = Path(out), is_main, checkpoint_name
        self.latest = self.out / checkpoint_name
        self.steps_per_epoch = steps_per_epoch
        self.pending: list[tuple[dict[str, Any], torch.Tensor]] = []
        self.last_loss, self.last_stats = last_loss, {}
        self.log_file = self.mon_file = self.progress = None
        self.trackers = Trackers([])
        self.monitored: set[int] = set()
        if not is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for tmp in stale_temp_files(self.out):
            tmp.unlink(missing_ok=True)
        (self.out / "summary.json").unlink(missing_ok=True)
        with no_space(self.out / "config.yaml", self.latest):
            save_config(cfg, self.out / "config.yaml")
        record_config_change(self.out, start_step, config_change, self.latest)
        # log.csv holds the steps before start_step; monitor.csv's row at start_step describes the checkpointed
        # weights, so it stays
        logged = [r for r in read_rows(self.out / "log.csv", LOG_FIELDS) if int(r["step"]) < start_step]
        checks = [r for r in read_rows(self.out / "monitor.csv", MONITOR_FIELDS) if int(r["step"]) <= start_step]
        for name, fields, rows in (("log.csv", LOG_FIELDS, logged), ("monitor.csv", MONITOR_FIELDS, checks)):
            with no_space(self.out / name, self.latest):
                rewrite_csv(self.out / name, fields, rows)
        self.monitored = {int(r["step"]) for r in checks}
        self.log_file = open(self.out / "log.csv", "a", newline="")  # noqa: SIM115 (closed in close())
        self.mon_file = open(self.out / "monitor.csv", "a", newline="")  # noqa: SIM115
        self.log_csv = csv.DictWriter(self.log_file, LOG_FIELDS)
        self.mon_csv = csv.DictWriter(self.mon_file, MONITOR_FIELDS)
        self.trackers = Trackers.open(self.out, cfg.logging.tracker, cfg.logging.tracker_project, cfg.to_dict(),
                                      start_step)
        if cfg.logging.progress:
            self.progress = tqdm(total=total_steps, initial=start_step, desc="pretrain", unit="step",
                                 dynamic_ncols=True, file=sys.stdout, mininterval=1.0)

    def set_total(self, total_steps: int) -> None:
        """The run's planned length changed (a timed run re-planned): the progress bar follows."""
        if self.progress is not None:
            self.progress.total = total_steps
            self.progress.refresh()

    def record(self, row: dict[str, Any], loss: torch.Tensor) -> None:
        """One step's row (every field but the loss) and its loss, still on the device."""
        self.pending.append((row, loss))

    def flush(self, show_lr: float | None = None) -> float:
        """Read the pending losses (one host sync), stop on a non-finite one, write their rows; returns the last
        loss. With ``show_lr`` (the next step's lr) the progress bar moves too."""
        if not self.pending:
            return self.last_loss
        losses = D.all_reduce_mean(torch.stack([t for _, t in self.pending])).tolist()
        with no_space(self.out / "log.csv", self.latest):
            self._write_rows(losses)
        last_row = self.pending[-1][0]
        self.pending.clear()
        self.last_loss = losses[-1]
        if self.progress is not None and show_lr is not None:
            self._show(last_row["step"] + 1, show_lr, last_row["images_per_s"])
        return self.last_loss

    def _write_rows(self, losses: list[float]) -> None:
        """The pending rows with their losses (rank 0 writes), up to a non-finite one, which stops the run."""
        for (row, _), value in zip(self.pending, losses):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at step {row['step']} (epoch {row['epoch']}); stopping. The last good "
                    f"checkpoint ({self.checkpoint_name}, if any) was written before this and is untouched. Try a "
                    f"lower optimization.lr, optimization.clip_grad, or meta.precision=fp32.")
            if self.is_main:
                written = {**row, "loss": f"{value:.6f}"}
                self.log_csv.writerow(written)
                self.trackers.log(row["step"], row_metrics(written))
        if self.is_main:
            self.log_file.flush()
            self.trackers.flush()

    def _show(self, step: int, lr: float, images_per_s: str) -> None:
        self.progress.update(step - self.progress.n)
        post = {"loss": f"{self.last_loss:.4f}", "lr": f"{lr:.2e}", "img/s": f"{float(images_per_s):.0f}"}
        if "rankme" in self.last_stats:
            post["rankme"] = f"{self.last_stats['rankme']:.1f}"
        if "knn" in self.last_stats:
            post["knn"] = f"{100 * self.last_stats['knn']:.1f}%"
        self.progress.set_postfix(post, refresh=False)

    def monitor(self, step: int, stats: dict[str, float]) -> None:
        """One collapse check's row; a step already in monitor.csv (a resumed run's final check) is not repeated."""
        self.last_stats = {**self.last_stats, **stats}
        if not self.is_main or step in self.monitored:
            return
        self.monitored.add(step)
        values = {k: f"{v:.5g}" for k, v in stats.items()}
        with no_space(self.out / "monitor.csv", self.latest):
            self.mon_csv.writerow({"epoch": step // self.steps_per_epoch, "step": step, **values})
            self.mon_file.flush()
        self.trackers.log(step, monitor_metrics(values))
        self.trackers.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_main:
            with no_space(self.out / "summary.json", self.latest):
                atomic_write_json(self.out / "summary.json", summary)
            self.trackers.finish(summary, self.out / "summary.json")

    def close(self, quiet: bool = False) -> None:
        """Close every file; ``quiet``: while an error propagates, a close that fails (a full disk cannot take the
        buffered rows) must not replace it."""
        self.trackers.close(ok=not quiet)
        for f in (self.progress, self.log_file, self.mon_file):
            if f is None:
                continue
            try:
                f.close()
            except OSError:
                if not quiet:
                    raise

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close(quiet=exc[0] is not None)
