"""benchmarks/gpu_check.py: its --smoke run (the full check's code on the CPU at tiny shapes) passes every section,
and a section that fails or overruns its time box is recorded without losing the others."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_gpu_check_smoke_passes_every_section(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert json.loads(r.stdout.strip().splitlines()[-1]).keys() == res.keys() - {"shapes"}  # the printed summary
    expected = [name for name, _, _ in gpu_check.SECTIONS if not name.startswith("train:1:")]  # smoke: one model
    assert [k for k in res if k not in ("shapes", "total_s")] == expected
    for name in expected:
        assert res[name]["status"] == "ok", (name, res[name].get("error"), res[name].get("stderr_tail"))
    assert res["env"]["bf16_tflops"] > 0 and res["env"]["fp32_tflops"] > 0
    for mode in ("eager", "compile"):
        row = res[f"train:0:{mode}"]
        assert row["batch"] == 4 and row["images_per_s"] > 0 and row["gflop_per_image"] > 0 and 0 < row["mfu"]
    assert res["maxbatch"]["largest_batch"] == 8 and res["maxbatch"]["bounded_by_limit"]
    prec = res["precision"]
    assert len(prec["fp32_losses"]) == len(prec["bf16_losses"]) == 5 and prec["max_rel_diff"] < 0.5
    ddp = res["ddp"]
    assert ddp["process_group"] and ddp["backend"] == "gloo" and ddp["steps"] == 2 and ddp["world_size"] == 1
    for key in ("folder_worker_path", "folder_gpu_augment", "shards_worker_path", "shards_gpu_augment"):
        assert res["loader"][f"{key}_images_per_s"] > 0
    learn = res["learn"]  # a few steps, then both probes (their accuracies are the GPU run's to judge)
    assert learn["steps"] > 0 and 0 < learn["probe_accuracy"] <= 1 and 0 < learn["random_accuracy"] <= 1
    assert "train:0:eager" in r.stdout and "MFU" in r.stdout  # the table


def test_a_failing_or_overrunning_section_is_recorded(tmp_path):
    (tmp_path / "sections").mkdir()
    broken = gpu_check.run_section("train:7:eager", 120, tmp_path, smoke=True)  # no 8th model: IndexError
    assert broken["status"] == "error" and "IndexError" in broken["error"]
    slow = gpu_check.run_section("precision", 0.5, tmp_path, smoke=True)
    assert slow["status"] == "timeout" and "time box" in slow["error"]


def test_sections_past_the_budget_are_skipped_not_run(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path),
                        "--only", "ddp,loader", "--budget", "20"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {k for k in res if k not in ("shapes", "total_s")} == {"ddp", "loader"}
    assert res["ddp"]["status"] == res["loader"]["status"] == "skipped"  # each needs at least 25 s


def test_mfu_is_against_the_runs_bf16_peak_and_the_table_shows_errors():
    res = {"shapes": {}, "env": {"status": "ok", "seconds": 1.0, "bf16_tflops": 2.0},
           "train:0:eager": {"status": "ok", "seconds": 1.0, "arch": "vit_tiny", "patch": 8, "batch": 4,
                             "images_per_s": 10.0, "step_ms": 400.0, "peak_mem_mib": None, "gflop_per_image": 1.0,
                             "achieved_tflops": 0.5},
           "ddp": {"status": "skipped", "seconds": 0.0, "error": "3 s left of the budget"}}
    gpu_check.mfu(res)
    assert res["train:0:eager"]["mfu"] == 0.25
    text = gpu_check.table(res)
    assert "MFU 25.0%" in text and "skipped" in text and "3 s left" in text
