import csv
import json
import math
import os
import stat

import pytest
import torch

from ijepa.config import load_config
from ijepa.errors import NonFiniteLossError
from ijepa.train.runlog import LOG_FIELDS, MONITOR_FIELDS, RunLog, read_rows

CFG = load_config(None, ["logging.progress=false"])
HEADER = ",".join(LOG_FIELDS) + "\r\n"


def row(step: int, loss: str = "1.000000") -> str:
    return f"0,{step},{loss},0.1,0.04,0.99,10,8,5.0,100.0,0\r\n"


def steps(path) -> list[int]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == LOG_FIELDS if path.name == "log.csv" else rows[0] == MONITOR_FIELDS
    return [int(r[1]) for r in rows[1:]]


def open_log(out, start_step: int, **kw) -> RunLog:
    return RunLog(out, CFG, is_main=True, start_step=start_step, total_steps=100, steps_per_epoch=10,
                  checkpoint_name="jepa-latest.pth.tar", **kw)


@pytest.mark.parametrize("damage", ["torn last row", "torn terminator", "empty file", "no header",
                                    "repeated header", "missing file", "step twice"])
def test_resume_repairs_what_a_kill_left_and_cuts_to_the_checkpoint(tmp_path, damage):
    text = HEADER + "".join(row(s) for s in range(6))
    text = {"torn last row": text + "0,6,1.0", "torn terminator": text + row(6)[:-1], "empty file": "",
            "no header": text.removeprefix(HEADER), "repeated header": text + HEADER + row(6),
            "missing file": None, "step twice": text + row(3, "9.000000")}[damage]
    if text is not None:
        (tmp_path / "log.csv").write_text(text, newline="")
    with open_log(tmp_path, start_step=4) as log:
        for s in (4, 5):
            log.record({"epoch": 0, "step": s, "lr": "0.1", "wd": "0", "momentum": "0", "ctx_tokens": 1,
                        "tgt_tokens": 1, "step_ms": "1", "images_per_s": "1", "skipped": 0}, torch.tensor(2.0))
        assert log.flush() == 2.0
    expected = [] if damage in ("empty file", "missing file") else [0, 1, 2, 3]
    assert steps(tmp_path / "log.csv") == expected + [4, 5]
    kept = {int(r["step"]): r["loss"] for r in read_rows(tmp_path / "log.csv", LOG_FIELDS)}
    if damage == "step twice":
        assert kept[3] == "9.000000"  # the later row of a step is the one kept
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_fresh_start_replaces_old_logs_and_monitor_rows_at_the_checkpoint_stay(tmp_path):
    (tmp_path / "log.csv").write_text(HEADER + row(0) + row(1), newline="")
    mon = ",".join(MONITOR_FIELDS) + "\r\n" + "".join(f"{s // 10},{s},0.1,2.0,\r\n" for s in (5, 10, 15))
    (tmp_path / "monitor.csv").write_text(mon, newline="")
    with open_log(tmp_path, start_step=10) as log:
        log.monitor(10, {"target_std": 0.1, "rankme": 3.0})  # the check a resumed run repeats: not logged twice
        log.monitor(12, {"target_std": 0.1, "rankme": 3.0})
    assert steps(tmp_path / "monitor.csv") == [5, 10, 12]
    with open_log(tmp_path, start_step=0):
        pass
    assert steps(tmp_path / "log.csv") == [] and steps(tmp_path / "monitor.csv") == []


def test_stale_temporary_files_are_removed_and_files_keep_the_umask_mode(tmp_path):
    (tmp_path / ".jepa-latest.pth.tar.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "keep.tmp").write_text("not ours")
    with open_log(tmp_path, start_step=0) as log:
        log.write_summary({"steps": 0, "loss": math.pi})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "keep.tmp", "log.csv", "monitor.csv",
                                                          "summary.json"]
    assert json.loads((tmp_path / "summary.json").read_text())["loss"] == math.pi
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "log.csv", "summary.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_flush_reads_losses_once_and_stops_on_a_non_finite_one(tmp_path):
    with open_log(tmp_path, start_step=0) as log:
        assert math.isnan(log.flush())  # nothing pending: the last loss (none yet)
        for s, v in enumerate((1.5, float("inf"), 2.0)):
            log.record({"epoch": 0, "step": s, "lr": "0.1", "wd": "0", "momentum": "0", "ctx_tokens": 1,
                        "tgt_tokens": 1, "step_ms": "1", "images_per_s": "1", "skipped": 0}, torch.tensor(v))
        with pytest.raises(NonFiniteLossError, match="loss became inf at step 1 .*jepa-latest.pth.tar"):
            log.flush()
    assert steps(tmp_path / "log.csv") == [0]  # the rows before the bad one are kept
