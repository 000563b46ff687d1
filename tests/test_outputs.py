"""Outputs written whole and failures said in one line: feature files and export folders killed mid-write (SIGKILL
into a real writer), what a killed writer leaves and who removes it, and the small truths of the commands that write
or show outputs (config, viz masks/curves/features, extract, convert, load of a fine-tuning folder)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import pytest
import torch
import yaml
from PIL import Image

matplotlib.use("Agg")  # before anything touches pyplot; the viz code itself never does

from ijepa.cli import build_parser, main  # noqa: E402
from ijepa.config import load_config  # noqa: E402
from ijepa.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from ijepa.eval.extract import extract_feature_set  # noqa: E402
from ijepa.eval.feature_file import FeatureSet, load_features, save_features  # noqa: E402
from ijepa.interop import convert, export, load  # noqa: E402
from ijepa.io import STALE_AFTER_S, remove_stale_temps  # noqa: E402
from ijepa.models.vit import build_encoder  # noqa: E402
from ijepa.recipes import native_rung  # noqa: E402
from ijepa.viz.curves import read_run  # noqa: E402
from ijepa.viz.features import draw_features, encode, pca_feature_maps  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the machine is shared with timed runs


pytestmark = pytest.mark.usefixtures("one_thread")


def _set(k: int, rows: int = 6, dim: int = 3) -> FeatureSet:
    """Write number ``k``: every value, label, row name and the record say ``k``, so a mixed set shows."""
    return FeatureSet(torch.full((rows, dim), float(k)), torch.full((rows,), k, dtype=torch.long),
                      rows=[f"w{k}/{i}" for i in range(rows)], meta={"write": k})


def _whole_or_refused(path: Path) -> int | None:
    """The write number of the set at ``path`` (all of it from that one write), or None where it was refused."""
    try:
        fs = load_features(path)
    except DataError as e:
        assert "\n" not in str(e) and "different writes" in str(e), str(e)
        return None
    k = fs.meta["write"]
    assert torch.all(fs.features == k) and torch.all(fs.labels == k) and fs.rows[-1] == f"w{k}/{len(fs) - 1}"
    return k


def _temps(folder: Path, pid: int | None = None) -> list[Path]:
    """Temporary files and folders in ``folder`` (of the writer ``pid`` only, when given)."""
    out = [p for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp-" in p.name]
    return [p for p in out if f"{pid}@" in p.name] if pid is not None else out


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _wait_until_writing(folder: Path, proc, timeout: float = 120.0) -> None:
    """Until ``proc`` has a temporary file or folder in ``folder``: it is in the middle of a write."""
    end = time.monotonic() + timeout
    while not _temps(folder, proc.pid):
        assert proc.poll() is None, f"the writer exited ({proc.returncode}) before it was seen writing"
        assert time.monotonic() < end, "the writer was never seen writing"
        time.sleep(0.002)


# ------------------------------------------------------------------------------------- .npy feature sets

WRITER = """
import sys, torch
from ijepa.eval.feature_file import FeatureSet, save_features
path, first, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for k in range(first, first + 100000):  # until killed
    save_features(path, FeatureSet(torch.full((rows, dim), float(k)), torch.full((rows,), k, dtype=torch.long),
                                   rows=[f"w{k}/{i}" for i in range(rows)], meta={"write": k}))
"""


@pytest.mark.slow
def test_a_npy_feature_set_killed_at_random_moments_is_whole_or_refused(tmp_path, prewarmed):
    path = tmp_path / "feats.npy"
    save_features(path, _set(0, rows=2048, dim=8192))  # the same row count every time: counting cannot tell
    rng = random.Random(0)
    seen, mid_write = [], 0
    for i in range(6):
        p = prewarmed.python(["-c", WRITER, str(path), str(1000 * (i + 1)), "2048", "8192"], env=ENV)
        try:
            _wait_until_writing(tmp_path, p)  # its first set
            time.sleep(rng.uniform(0.0, 0.8))
        finally:
            p.kill()
            p.wait()
        mid_write += bool(_temps(tmp_path, p.pid))
        seen.append(_whole_or_refused(path))
    assert mid_write >= 2, "the kills should land mid-write"
    assert any(k is not None for k in seen)
    save_features(path, _set(7))  # the next write removes what the killed writers left
    assert _temps(tmp_path) == [] and _whole_or_refused(path) == 7


@pytest.mark.parametrize("renames_done", [0, 1, 2])
def test_a_write_stopped_between_its_renames_leaves_the_old_set_or_a_refusal(tmp_path, monkeypatch, renames_done):
    # The windows between the three renames are too short for random kills to hit: stop the write in each.
    path = tmp_path / "feats.npy"
    save_features(path, _set(1))
    real, done = os.replace, []

    def replace(src, dst):
        if len(done) == renames_done:
            raise KeyboardInterrupt  # stands for the process dying here
        done.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_features(path, _set(2))
    monkeypatch.undo()
    assert done == ["feats.json", "feats_labels.npy"][:renames_done]  # the record goes in first
    assert _whole_or_refused(path) == (1 if renames_done == 0 else None)
    save_features(path, _set(3))
    assert _whole_or_refused(path) == 3


def test_labels_or_features_from_another_write_are_refused_even_with_the_same_row_count(tmp_path):
    path, labels = tmp_path / "feats.npy", tmp_path / "feats_labels.npy"
    save_features(path, _set(1))
    old_labels, old_feats = labels.read_bytes(), path.read_bytes()
    save_features(path, _set(2))
    labels.write_bytes(old_labels)
    with pytest.raises(DataError, match="feats_labels.npy is not the labels feats.json describes"):
        load_features(path)
    save_features(path, _set(3))
    path.write_bytes(old_feats)
    with pytest.raises(DataError, match="the features are not the ones feats.json describes"):
        load_features(path)
    save_features(path, FeatureSet(torch.zeros(6, 3), meta={"write": 5}))  # no labels: the old file goes
    assert not labels.exists() and load_features(path).labels is None


def test_stale_temporary_files_are_those_of_dead_writers(tmp_path):
    dst = tmp_path / "feats.npy"
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".feats.npy.{_dead_pid()}@{host}.abcdefgh.tmp"
        alive = tmp_path / f".feats.npy.{live.pid}@{host}.abcdefgh.tmp"
        elsewhere = tmp_path / ".feats.npy.1@another-host.abcdefgh.tmp"  # cannot be asked: judged by its age
        old_unnamed, new_unnamed = tmp_path / ".feats.npy.oldoldol.tmp", tmp_path / ".feats.npy.newnewne.tmp"
        folder = tmp_path / f"feats.npy.tmp-{_dead_pid()}@{host}-abcdefgh"
        other = tmp_path / f".other.npy.{_dead_pid()}@{host}.abcdefgh.tmp"  # another destination's
        for p in (dead, alive, elsewhere, old_unnamed, new_unnamed, other):
            p.write_bytes(b"x")
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        long_ago = time.time() - STALE_AFTER_S - 60
        os.utime(old_unnamed, (long_ago, long_ago))
        save_features(dst, _set(1))
        left = {p.name for p in _temps(tmp_path)}
        assert left == {alive.name, elsewhere.name, new_unnamed.name, other.name}
        os.utime(elsewhere, (long_ago, long_ago))
        live.kill()
        live.wait()
        assert set(remove_stale_temps(dst)) == {alive, elsewhere}
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------------------- export folders

def _complete_hf(d: Path) -> bool:
    return {p.name for p in d.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json",
                                             "README.md"}  # the model card


@pytest.mark.slow
def test_an_hf_export_killed_mid_write_leaves_the_old_folder_whole_and_is_cleaned(tmp_path, prewarmed):
    src = export(build_encoder("vit_base", img_size=32, patch_size=16, depth=6), tmp_path / "enc.safetensors")
    dst = tmp_path / "hf"
    convert(src, dst, to="hf")
    before = load(dst).state_dict()
    rng, mid_write = random.Random(1), 0
    for _ in range(4):
        p = prewarmed.ijepa(["convert", str(src), str(dst), "--to", "hf"], env=ENV)
        try:
            _wait_until_writing(tmp_path, p)
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            p.kill()
            p.wait()
        mid_write += bool(_temps(tmp_path, p.pid))
        if dst.exists():  # absent only after a kill between the two final renames
            assert _complete_hf(dst)  # config.json present: the whole folder, as transformers assumes
            torch.testing.assert_close(load(dst).state_dict(), before, rtol=0, atol=0)
    assert mid_write >= 2, "the kills should land mid-write"
    assert main(["convert", str(src), str(dst), "--to", "hf"]) == 0
    assert _complete_hf(dst) and _temps(tmp_path) == []


def test_an_export_replaces_an_earlier_one_whole_and_refuses_other_files_before_reading(tmp_path, capsys):
    enc = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=1)
    src = export(enc, tmp_path / "enc.safetensors")
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "pytorch_model.bin").write_bytes(b"an earlier export's weights")
    assert main(["convert", str(src), str(dst), "--to", "hf"]) == 0
    assert _complete_hf(dst) and _temps(tmp_path) == []  # the earlier file went with the folder it was in
    torch.testing.assert_close(load(dst).state_dict(), enc.state_dict())
    timm_dir = tmp_path / "timm"
    convert(src, timm_dir, to="timm")
    convert(src, timm_dir, to="timm")
    assert {p.name for p in timm_dir.iterdir()} == {"config.json", "model.safetensors"}
    (dst / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "missing.pth"), str(dst), "--to", "hf"]) == 1  # dst checked first
    err = capsys.readouterr().err
    assert err.startswith("ijepa: checkpoint error:") and "notes.txt" in err and err.count("\n") == 1
    assert (dst / "notes.txt").read_text() == "mine"
    with pytest.raises(CheckpointError, match="not a folder"):
        export(enc, src, to="hf")


def test_load_reads_a_fine_tuning_folder_and_its_model_folder(tmp_path):
    from ijepa.eval.finetune import FinetuneConfig, finetune

    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", img_size=28, patch_size=14, in_chans=1, embed_dim=24, depth=1, num_heads=2)
    x, y = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8), torch.arange(12) % 3
    cfg = FinetuneConfig(epochs=1, batch_size=4, dtype="fp32", random_resized_crop=False, hflip=False)
    res = finetune(enc, x, y, x[:4], y[:4], cfg, tmp_path / "ft", progress=False)
    tuned = res["model"].encoder.state_dict()
    for where in (tmp_path / "ft", tmp_path / "ft" / "model"):
        loaded = load(where)
        torch.testing.assert_close(loaded.state_dict(), tuned, rtol=0, atol=0)
        assert "fine-tuned classifier encoder" in loaded.source


# ------------------------------------------------------------------------------------ the small truths

@pytest.mark.parametrize("isa", [None, "AVX2"])
def test_config_and_viz_masks_without_config_show_the_rung_train_runs_here(tmp_path, monkeypatch, capsys, isa):
    if isa:  # a CPU without native bf16, as oneDNN capped below it makes this one
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    rung = native_rung()[0].config
    assert rung == "fmnist_cpu_fp32" or not isa
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# no --config: {rung}, the CPU default's rung for this machine's hardware")
    assert yaml.safe_load(out) == yaml.safe_load(yaml.safe_dump(load_config(rung).to_dict()))
    assert main(["viz", "masks", "--out", str(tmp_path / "m.png"), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert f"no --config: {rung}" in out and f"\n{rung}: {load_config(rung).data.crop_size} px" in out


@pytest.mark.parametrize("out", ["feats", "feats.pt", "a_folder.npy"])
def test_extract_checks_out_before_any_work(tmp_path, capsys, out):
    (tmp_path / "a_folder.npy").mkdir()
    assert main(["extract", str(tmp_path / "no-model.pth"), "--out", str(tmp_path / out)]) == 1  # no model read
    err = capsys.readouterr().err
    assert err.startswith("ijepa: data error:") and err.count("\n") == 1
    assert ("is a folder" in err) if out == "a_folder.npy" else ("extension" in err)


def test_viz_curves_on_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    png = str(tmp_path / "c.png")
    assert main(["viz", "curves", str(tmp_path), "--out", png]) == 1
    (tmp_path / "log.csv").write_text("step,epoch\n0,0\n1,0\n")
    assert main(["viz", "curves", str(tmp_path), "--out", png]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("ijepa: error: ") for line in err)
    assert "has no log.csv" in err[0] and "has none of the columns plotted" in err[1]
    with pytest.raises(FileNotFoundError):  # still what a caller of read_run may catch
        read_run(tmp_path / "nothing")


class _TwoLayers(torch.nn.Module):
    """An encoder without ``.blocks`` whose ``get_intermediate_layers`` has only 2 layers to give."""

    input_spec = {"image_size": (8, 8), "in_chans": 3, "mean": (0.0,) * 3, "std": (1.0,) * 3}

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)

    def get_intermediate_layers(self, x, n=4, **kw):
        return [self(x), self(x)]


def _folder(root: Path, n: int, name: str = "img_{i:02d}.png") -> Path:
    for i in range(n):
        root.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(i)
        Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8, generator=g).numpy()).save(
            root / name.format(i=i))
    return root


def test_last4_needs_four_blocks_and_says_so_before_any_work(tmp_path, capsys):
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    two = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=2)
    with pytest.raises(ConfigError, match="last 4 blocks, but this encoder has 2"):
        extract_feature_set(two, images, pooling="last4", progress=False)
    with pytest.raises(ConfigError, match="this encoder has 2"):
        extract_feature_set(_TwoLayers(), images, pooling="last4", progress=False)
    four = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=4)
    fs = extract_feature_set(four, images, pooling="last4", progress=False)
    assert fs.features.shape == (3, 4 * four.embed_dim) and fs.meta["pooling"] == "last4"
    model = export(two, tmp_path / "two.safetensors")
    out, root = tmp_path / "f.npy", _folder(tmp_path / "d" / "a", 2).parent
    assert main(["extract", str(model), "--dataset", "imagefolder", "--root", str(root), "--pooling", "last4",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ijepa: config error: pooling='last4'") and err.count("\n") == 1 and not out.exists()


def test_viz_features_says_how_many_images_it_fit_on_and_shows_whole_names(tmp_path, capsys):
    enc = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=1)
    model = str(export(enc, tmp_path / "enc.safetensors"))
    name = "holiday_photo_2026_12_07_{i:02d}.png"
    for n_files in (18, 5):  # more than --n shows, and fewer
        root = _folder(tmp_path / f"imgs{n_files}", n_files, name)
        assert main(["viz", "features", model, "--images", str(root), "--out", str(tmp_path / "f.png")]) == 0
        assert f"fit on {n_files} images (all there are)" in capsys.readouterr().out
    names = [name.format(i=i) for i in range(3)]
    images = torch.rand(3, 3, 16, 16)
    maps = pca_feature_maps(encode(enc, images), enc.grid_size)
    fig = draw_features(images, maps, names=names)
    assert [ax.get_title().replace("\n", "") for ax in fig.axes[:3]] == names  # whole, and told apart


def test_extract_and_convert_describe_every_option():
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for cmd in ("extract", "convert"):
        assert [a.dest for a in commands[cmd]._actions if not a.help] == [], cmd


def test_removing_a_finished_writers_folder_leaves_the_export(tmp_path):
    # A writer whose folder was renamed into place leaves nothing that matches a temporary name.
    enc = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=1)
    d = export(enc, tmp_path / "hf", to="hf")
    stale = tmp_path / f"hf.tmp-{_dead_pid()}@{socket.gethostname()}-abcdefgh"
    shutil.copytree(d, stale)
    assert remove_stale_temps(d) == [stale] and _complete_hf(d) and _temps(tmp_path) == []
