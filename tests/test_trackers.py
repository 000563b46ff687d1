"""Experiment trackers (``logging.tracker``): a run tracked by W&B (offline) and MLflow (a file store) sends them the
values log.csv and monitor.csv hold, at their steps, the config and the summary; a resumed run continues the same
tracked runs. Offline throughout: W&B's offline run is read back from its ``.wandb`` file, MLflow's from its store."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import cfg_with

from ijepa.config import load_config
from ijepa.errors import ConfigError
from ijepa.train import trackers as T
from ijepa.train.loop import train
from ijepa.train.runlog import LOG_FIELDS, MONITOR_FIELDS, RunLog, read_rows

wandb = pytest.importorskip("wandb")
pytest.importorskip("mlflow")

TRACKED = ("logging.tracker=[wandb, mlflow]", "logging.monitor_freq=3", "logging.log_freq=2", "logging.online_knn=true")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A run tracked by both, stopped at step 4 (optimization.max_steps) and resumed to step 8."""
    tmp = tmp_path_factory.mktemp("tracked")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_X_DISABLE_STATS": "true",
           "WANDB_X_DISABLE_MACHINE_INFO": "true", "MLFLOW_TRACKING_URI": (tmp / "mlruns").as_uri()}
    out = tmp / "run"
    (tmp / "start").mkdir()
    (tmp / "resume").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setenv("WANDB_DIR", str(tmp / "start"))  # each process's offline run in a folder of its own
        train(cfg_with("optimization.max_steps=4", *TRACKED), out)
        first = json.loads((out / T.TRACKER_FILE).read_text())
        wandb.teardown()  # as a new process would, the resume reads WANDB_DIR afresh
        mp.setenv("WANDB_DIR", str(tmp / "resume"))
        summary = train(cfg_with("optimization.max_steps=8", *TRACKED), out)
    return {"out": out, "tmp": tmp, "first": first, "last": json.loads((out / T.TRACKER_FILE).read_text()),
            "summary": summary, "uri": env["MLFLOW_TRACKING_URI"]}


def expected(out: Path) -> dict[int, dict[str, float]]:
    """step -> every metric log.csv and monitor.csv hold for it, as the numbers written there."""
    by_step: dict[int, dict[str, float]] = {}
    for row in read_rows(out / "log.csv", LOG_FIELDS):
        by_step.setdefault(int(row["step"]), {}).update(T.row_metrics(row))
    for row in read_rows(out / "monitor.csv", MONITOR_FIELDS):
        checks = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        by_step.setdefault(int(row["step"]), {}).update(T.monitor_metrics(checks))
    return by_step


# ------------------------------------------------------------------------- W&B's offline files, read back

def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file: a 7-byte file header, then LevelDB-log chunks (7-byte header: checksum,
    length, type) in 32 KiB blocks, a record split over blocks as first/middle/last chunks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, records, parts = path.read_bytes(), 7, 32768, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
        elif kind == 0:
            break
    return records


def item_value(item):
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind is None:
        return json.loads(item.value_json) if item.value_json else None
    value = getattr(item, kind)
    return json.loads(value) if kind in ("json", "value_json") else value


def wandb_history(run_dir: Path) -> tuple[str, list[dict], dict, dict]:
    """(run id, history rows, config, summary) of one offline run folder."""
    (path,) = run_dir.glob("run-*.wandb")
    run_id, rows, config, summary = "", [], {}, {}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
        elif kind == "history":
            rows.append({i.key or "/".join(i.nested_key): item_value(i) for i in r.history.item})
        elif kind == "config":
            config.update({i.key or "/".join(i.nested_key): item_value(i) for i in r.config.update})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): item_value(i) for i in r.summary.update})
    return run_id, rows, config, summary


def test_wandb_gets_the_logged_rows_config_and_summary_and_a_resume_continues_its_run(tracked):
    runs = [r for part in ("start", "resume") for r in (tracked["tmp"] / part / "wandb").glob("offline-run-*")]
    assert len(runs) == 2  # one per process: the start and the resume
    parts = [wandb_history(r) for r in runs]
    run_id = tracked["first"]["wandb"]["id"]
    assert {p[0] for p in parts} == {run_id} and tracked["last"]["wandb"]["id"] == run_id
    got: dict[int, dict[str, float]] = {}
    for _, rows, _, _ in parts:
        for row in rows:
            step = row.pop("step", None)
            metrics = {k: v for k, v in row.items() if k.startswith(("train/", "monitor/"))}
            if step is not None and metrics:
                got.setdefault(int(step), {}).update(metrics)
    assert got == expected(tracked["out"])  # every step of both processes, the very values of the CSVs
    config, summary = parts[1][2], parts[1][3]
    assert config["data"]["batch_size"] == 16 and config["run_folder"] == str(tracked["out"].resolve())
    assert summary["summary/steps"] == 8 and summary["summary/final_loss"] == tracked["summary"]["final_loss"]


def test_mlflow_gets_the_logged_rows_params_and_summary_and_a_resume_continues_its_run(tracked):
    from mlflow.tracking import MlflowClient

    run_id = tracked["first"]["mlflow"]["run_id"]
    assert tracked["last"]["mlflow"] == {"run_id": run_id, "tracking_uri": tracked["uri"]}
    client = MlflowClient(tracking_uri=tracked["uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["data.batch_size"] == "16" and run.data.params["meta.model_name"] == "vit_tiny"
    assert run.data.params["run_folder"] == str(tracked["out"].resolve())
    want = expected(tracked["out"])
    names = {k for m in want.values() for k in m}
    assert {"train/loss", "train/lr", "train/wd", "train/momentum", "train/images_per_s", "monitor/rankme",
            "monitor/knn"} <= names
    for name in names:
        history = client.get_metric_history(run_id, name)
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            [(s, m[name]) for s, m in sorted(want.items()) if name in m], name  # each step once, as written
    assert run.data.metrics["summary/steps"] == 8
    assert "summary.json" in [f.path for f in client.list_artifacts(run_id)]


def test_tracker_key_takes_a_name_a_list_or_none_and_the_old_tensorboard_key_still_loads():
    assert load_config(None, ["logging.tracker=wandb"]).logging.tracker == ("wandb",)
    assert load_config(None, ["logging.tracker=[mlflow, wandb, mlflow]"]).logging.tracker == ("mlflow", "wandb")
    assert load_config(None, ["logging.tracker=none"]).logging.tracker == ()
    cfg = load_config(None, ["logging.tensorboard=true", "logging.tracker=mlflow"])
    assert cfg.logging.tracker == ("mlflow", "tensorboard")
    assert load_config(None, ["logging.tensorboard=false"]).logging.tracker == ()
    with pytest.raises(ConfigError, match="tracker=comet: 'comet' is not one of wandb, mlflow, tensorboard or none"):
        load_config(None, ["logging.tracker=comet"])


def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"wandb needs the wandb package: pip install 'ijepa\[tracking\]'"):
        T.Trackers.open(tmp_path, ("wandb",), "ijepa", {}, 0)
    assert not (tmp_path / T.TRACKER_FILE).exists()


def test_a_tracker_that_cannot_start_stops_the_start_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    with pytest.raises(ConfigError, match=r"^logging.tracker: mlflow could not start: \w+: "):
        T.Trackers.open(tmp_path, ("mlflow",), "ijepa", {}, 0)
    assert not (tmp_path / T.TRACKER_FILE).exists()


def test_only_rank_0_tracks(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    cfg = load_config(None, ["logging.tracker=mlflow", "logging.progress=false"])
    with RunLog(tmp_path / "run", cfg, is_main=False, start_step=0, total_steps=10, steps_per_epoch=5,
                checkpoint_name="jepa-latest.pth.tar") as log:
        assert log.trackers.trackers == []
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "run").exists()


class Failing(T.Tracker):
    name = "failing"

    def __init__(self):
        self.got, self.closed = [], None

    def log(self, rows):
        self.got += rows
        if len(self.got) > 1:
            raise ConnectionError("the server went away")

    def close(self, ok):
        self.closed = ok


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_line_and_the_others_go_on(capsys):
    bad, good = Failing(), Failing()
    good.log = lambda rows: good.got.extend(rows)
    group = T.Trackers([bad, good])
    for step in range(3):
        group.log(step, {"train/loss": float(step)})
        group.flush()
    group.close()
    assert [s for s, _ in good.got] == [0, 1, 2] and [s for s, _ in bad.got] == [0, 1]
    assert bad.closed is False and good.closed is True
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failing: sending to the tracker failed (ConnectionError" in err
