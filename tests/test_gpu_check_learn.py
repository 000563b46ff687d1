"""benchmarks/prepare_fmnist.py and where the GPU check's learn section reads Fashion-MNIST (the section itself runs
in tests/test_gpu_check.py's --smoke run)."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check_learn  # noqa: E402
import prepare_fmnist  # noqa: E402

needs_fmnist = pytest.mark.skipif(not gpu_check_learn.has_fmnist(gpu_check_learn.DEBIAN),
                                  reason="the Debian package dataset-fashion-mnist is not installed")


@needs_fmnist
def test_prepare_copies_the_four_idx_files_once(tmp_path):
    dst = tmp_path / "shared" / "fmnist"
    files = prepare_fmnist.prepare(gpu_check_learn.DEBIAN, dst)
    assert sorted(f.name for f in files) == sorted(f"{stem}.gz" for stem in gpu_check_learn.FILES)
    for f in files:
        assert f.read_bytes() == (gpu_check_learn.DEBIAN / f.name).read_bytes()
    assert gpu_check_learn.has_fmnist(dst)
    before = {f: f.stat().st_mtime_ns for f in files}
    os.utime(files[0], ns=(1, 1))  # an identical file is left alone: its time stays as set
    prepare_fmnist.prepare(gpu_check_learn.DEBIAN, dst)
    assert files[0].stat().st_mtime_ns == 1 and all(f.stat().st_mtime_ns == t for f, t in before.items()
                                                    if f != files[0])


def test_a_file_that_is_not_idx_is_refused_before_anything_is_copied(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for stem in gpu_check_learn.FILES:
        (src / stem).write_bytes(b"<html>not found</html>")
    with pytest.raises(Exception, match="not an IDX file"):
        prepare_fmnist.prepare(src, dst)
    assert list(dst.iterdir()) == []


def test_the_learn_section_reads_shared_fmnist_first(tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "fmnist"
    monkeypatch.setattr(gpu_check_learn, "SHARED", shared)
    monkeypatch.setattr(gpu_check_learn, "DEBIAN", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="prepare_fmnist.py"):
        gpu_check_learn.fmnist_folder()
    shared.mkdir(parents=True)
    for stem in gpu_check_learn.FILES:
        (shared / f"{stem}.gz").write_bytes(b"")
    assert gpu_check_learn.fmnist_folder() == shared
