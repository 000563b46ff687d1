"""Experiment trackers (``logging.tracker``): W&B, MLflow and TensorBoard receive what the run folder records.

Each tracker gets the resolved config as hyper-parameters; ``log.csv``'s loss, lr, weight decay, momentum and
images/s at each of its steps and ``monitor.csv``'s checks (target std, RankMe, online k-NN) at theirs, the very
values those files hold; the run folder; and ``summary.json`` at the end. The CSV files stay the run's record:
a tracker is a view of it. Only rank 0 tracks (``RunLog`` makes the trackers there alone).

A resumed run continues the tracked run it started: the ids are kept in the run folder's ``tracker.json`` (replaced
atomically), and a fresh start (step 0) begins new tracked runs. Values are sent at each ``log.csv`` flush (every
``logging.log_freq`` steps), one batch per tracker. A tracker that fails while the run goes on (a network gone)
is dropped with one line; training does not stop for it.

``wandb`` and ``mlflow`` are imported only here, when a run names them (``pip install 'ijepa[tracking]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, first_line
from ..io import atomic_write_json

TRACKER_FILE = "tracker.json"
# log.csv's and monitor.csv's columns -> the metric names every tracker gets
ROW_METRICS = {"loss": "train/loss", "lr": "train/lr", "wd": "train/wd", "momentum": "train/momentum",
               "images_per_s": "train/images_per_s"}
MONITOR_METRIC_PREFIX = "monitor/"
STEP_METRIC = "step"
# the package each tracker needs, and the pip extra that installs it
PACKAGES = {"wandb": ("wandb", "tracking"), "mlflow": ("mlflow", "tracking"),
            "tensorboard": ("tensorboard", "tensorboard")}


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The metrics of one ``log.csv`` row (as written: strings), as the numbers the file holds."""
    return {name: float(row[col]) for col, name in ROW_METRICS.items() if row.get(col) not in (None, "")}


def monitor_metrics(values: dict[str, str]) -> dict[str, float]:
    """The metrics of one ``monitor.csv`` row's checks (as written: strings)."""
    return {MONITOR_METRIC_PREFIX + k: float(v) for k, v in values.items() if v not in (None, "")}


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"meta": {"seed": 0}}`` -> ``{"meta.seed": 0}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class RunInfo:
    """What a tracker is told about the run."""

    out: Path
    name: str        # the run folder's name
    project: str     # logging.tracker_project
    config: dict     # the resolved config (Config.to_dict())
    start_step: int


class Tracker:
    """One tracker. ``start`` opens its run, or continues the one ``saved`` (what an earlier ``start`` returned,
    kept in ``tracker.json``) names, and returns what to keep; ``log`` sends metrics at steps; ``finish`` the
    summary (and the path of ``summary.json``); ``close`` ends it (``ok``: the run ended without an error)."""

    name = ""

    def start(self, run: RunInfo, saved: dict | None) -> dict:
        raise NotImplementedError

    def log(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        raise NotImplementedError

    def finish(self, summary: dict[str, Any], path: Path) -> None:
        pass

    def close(self, ok: bool) -> None:
        pass


class WandbTracker(Tracker):
    """A W&B run (``WANDB_MODE``, ``WANDB_DIR`` and the other ``WANDB_*`` settings apply; its local files go to the
    run folder's ``wandb/`` unless ``WANDB_DIR`` says otherwise). Each row carries its ``step`` as the x-axis
    (``define_metric``), so a resume that logs again the steps after its checkpoint is not refused by W&B's
    rule that steps only grow."""

    name = "wandb"

    def start(self, run: RunInfo, saved: dict | None) -> dict:
        import wandb

        kw: dict[str, Any] = {"project": run.project, "name": run.name, "resume": "allow",
                              "id": (saved or {}).get("id")}
        if not os.environ.get("WANDB_DIR"):
            kw["dir"] = str(run.out)
        self.run = wandb.init(**kw)
        self.run.config.update({**run.config, "run_folder": str(run.out.resolve())}, allow_val_change=True)
        self.run.define_metric(STEP_METRIC)
        for prefix in ("train/*", MONITOR_METRIC_PREFIX + "*"):
            self.run.define_metric(prefix, step_metric=STEP_METRIC)
        return {"id": self.run.id, "project": self.run.project}

    def log(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for step, metrics in rows:
            self.run.log({STEP_METRIC: step, **metrics})

    def finish(self, summary: dict[str, Any], path: Path) -> None:
        self.run.summary.update({f"summary/{k}": v for k, v in summary.items()})

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class MlflowTracker(Tracker):
    """An MLflow run in the store ``MLFLOW_TRACKING_URI`` names (else the one a resumed run used, else
    ``./mlruns`` as a file store: mlflow's own default needs a database package mlflow-skinny lacks; a file store,
    which MLflow 3 keeps in maintenance mode, is used as asked, ``MLFLOW_ALLOW_FILE_STORE`` set for it). The config
    is the run's parameters (dotted keys; a parameter cannot change in MLflow, so a resume adds only new keys and
    ``config_changes.jsonl`` keeps the changes), summary.json an artifact and ``summary/*`` metrics."""

    name = "mlflow"

    def start(self, run: RunInfo, saved: dict | None) -> dict:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        saved = saved or {}
        uri = os.environ.get("MLFLOW_TRACKING_URI") or saved.get("tracking_uri") or \
            Path("mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # a file store asked for (or ours): MLflow 3 refuses it unless this says yes
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client = MlflowClient(tracking_uri=uri)
        self.step = run.start_step
        run_id = saved.get("run_id") if saved.get("tracking_uri") == uri else None
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            have = client.get_run(run_id).data.params
        else:
            exp = client.get_experiment_by_name(run.project)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(run.project)
            run_id = client.create_run(exp_id, run_name=run.name,
                                       tags={"ijepa.run_folder": str(run.out.resolve())}).info.run_id
            have = {}
        self.run_id = run_id
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in flat({**run.config, "run_folder": str(run.out.resolve())}).items() if k not in have]
        for i in range(0, len(params), 100):  # MLflow's limit per call
            client.log_batch(run_id, params=params[i:i + 100])
        return {"run_id": run_id, "tracking_uri": uri}

    def log(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, values in rows for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's limit per call
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        if rows:
            self.step = rows[-1][0]

    def finish(self, summary: dict[str, Any], path: Path) -> None:
        numbers = {f"summary/{k}": float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log([(int(summary.get("steps", self.step)), numbers)])
        if path.is_file():
            self.client.log_artifact(self.run_id, str(path))

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class TensorBoardTracker(Tracker):
    """Events in the run folder's ``tensorboard/``; a resume drops the events a killed run wrote after the
    checkpoint it resumes from (``purge_step``)."""

    name = "tensorboard"

    def start(self, run: RunInfo, saved: dict | None) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.out / "tensorboard"), purge_step=run.start_step or None)
        if not run.start_step:
            self.writer.add_text("config", "```\n" + json.dumps(run.config, indent=2) + "\n```", 0)
        return {}

    def log(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for step, metrics in rows:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def finish(self, summary: dict[str, Any], path: Path) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=2) + "\n```",
                             int(summary.get("steps", 0)))

    def close(self, ok: bool) -> None:
        self.writer.close()


KINDS: dict[str, type[Tracker]] = {t.name: t for t in (WandbTracker, MlflowTracker, TensorBoardTracker)}


def require_packages(names: tuple[str, ...]) -> None:
    """One line naming the pip extra for the first tracker whose package is missing."""
    for name in names:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"logging.tracker: {name} needs the {module} package: pip install 'ijepa[{extra}]'")


def read_saved(out: Path) -> dict:
    try:
        saved = json.loads((out / TRACKER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


class Trackers:
    """The run's trackers behind one face: :meth:`log` buffers, :meth:`flush` sends (what ``RunLog.flush`` and
    ``RunLog.monitor`` call), :meth:`finish` sends the summary, :meth:`close` ends them."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self.pending: list[tuple[int, dict[str, float]]] = []

    @classmethod
    def open(cls, out: Path, names: tuple[str, ...], project: str, config: dict, start_step: int) -> Trackers:
        """Start (or, resuming at ``start_step`` > 0, continue) each tracker of ``names``; ``tracker.json`` keeps
        their ids."""
        if not names:
            return cls([])
        require_packages(names)
        saved = read_saved(out) if start_step else {}
        run = RunInfo(out, out.resolve().name, project, config, start_step)
        started, kept = [], {}
        try:
            for name in names:
                tracker = KINDS[name]()
                try:
                    kept[name] = tracker.start(run, saved.get(name))
                except Exception as e:  # each tracker raises its own kinds (no login, a store that says no)
                    raise ConfigError(f"logging.tracker: {name} could not start: {type(e).__name__}: "
                                      f"{first_line(e)}") from None
                started.append(tracker)
        except BaseException:
            cls(started).close(ok=False)
            raise
        if kept != {k: saved.get(k) for k in kept}:
            atomic_write_json(out / TRACKER_FILE, {**saved, **kept})
        return cls(started)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.trackers and metrics:
            self.pending.append((step, metrics))

    def flush(self) -> None:
        rows, self.pending = self.pending, []
        if rows:
            self._each("log", rows)

    def finish(self, summary: dict[str, Any], path: Path) -> None:
        self.flush()
        self._each("finish", summary, path)

    def close(self, ok: bool = True) -> None:
        self.flush()  # the rows log.csv got before an error stopped the run, too
        for t in self.trackers:
            try:
                t.close(ok)
            except Exception as e:  # closing must not hide the error a run stops with, nor stop a good one
                print(f"ijepa: {t.name}: closing the tracked run failed ({type(e).__name__}: {first_line(e)})",
                      file=sys.stderr, flush=True)
        self.trackers = []

    def _each(self, method: str, *args: Any) -> None:
        """Call ``method`` on each tracker; one that fails is dropped with one line, and the run goes on."""
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as e:
                self.trackers.remove(t)
                print(f"ijepa: {t.name}: sending to the tracker failed ({type(e).__name__}: {first_line(e)}); the "
                      "run goes on without it (log.csv keeps every row)", file=sys.stderr, flush=True)
                with contextlib.suppress(Exception):  # already reported once
                    t.close(ok=False)


__all__ = ["KINDS", "TRACKER_FILE", "RunInfo", "Tracker", "Trackers", "flat", "monitor_metrics", "row_metrics"]
