"""data.dataset: hf — a Hugging Face dataset, built here and read from local files only (save_to_disk and a folder of
parquet files): map-style and streamed training with exact resume, the split over two DDP processes, eval, extract
and finetune, and the one-line errors."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import cfg_with
from torchvision.transforms import PILToTensor

datasets = pytest.importorskip("datasets")

from ijepa.cli import main  # noqa: E402
from ijepa.data.decode import Unreadable  # noqa: E402
from ijepa.data.hf import hf_datasets  # noqa: E402
from ijepa.data.loader import build_loader  # noqa: E402
from ijepa.data.sources import open_images, probe_images  # noqa: E402
from ijepa.errors import DataError  # noqa: E402
from ijepa.eval.feature_file import load_features  # noqa: E402
from ijepa.train.checkpoint import load_checkpoint  # noqa: E402
from ijepa.train.loop import train  # noqa: E402

N_TRAIN, N_VAL, BAD = 40, 12, 7  # row BAD of train holds bytes that are no image
HF = ("data.dataset=hf", "data.crop_size=16", "data.in_chans=3", "data.num_workers=0", "data.limit=null",
      "data.batch_size=8", "mask.patch_size=4")


def _split(n: int, seed: int, bad: int | None = None) -> "datasets.Dataset":
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    images = [Image.fromarray((torch.rand(20, 20, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]
    if bad is not None:
        images[bad] = {"bytes": b"\xff\xd8 not a jpeg", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"]),
                                  "idx": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)], "idx": list(range(n))},
                                      features=features)


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
    """``disk``: a DatasetDict (train, validation) written by save_to_disk; ``parquet``: the same as parquet files;
    the datasets cache in the test's folder (loading parquet writes arrow files there)."""
    root = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "cache")
        mp.setenv("HF_DATASETS_CACHE", str(root / "cache"))  # the DDP processes read it
        mp.setenv("HF_HUB_OFFLINE", "1")
        # datasets pauses 5 s whenever a pass over a parquet stream ends (a guard against an arrow crash at thread
        # shutdown, apache/arrow#45214): harmless in a run, a minute of waiting in these tests
        mp.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
        datasets.disable_progress_bars()
        train_split, val_split = _split(N_TRAIN, 0, BAD), _split(N_VAL, 1)
        datasets.DatasetDict(train=train_split, validation=val_split).save_to_disk(str(root / "disk"))
        (root / "parquet").mkdir()
        train_split.to_parquet(str(root / "parquet" / "train-00000-of-00001.parquet"))
        val_split.to_parquet(str(root / "parquet" / "validation-00000-of-00001.parquet"))
        yield root


def losses(run: Path) -> dict[int, float]:
    with open(run / "log.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb)
    for s in la:
        assert abs(la[s] - lb[s]) <= 1e-6, (s, la[s], lb[s])
    ca, cb = load_checkpoint(a / "jepa-latest.pth.tar"), load_checkpoint(b / "jepa-latest.pth.tar")
    for part in ("encoder", "predictor", "target_encoder"):
        for k, v in ca[part].items():
            assert torch.allclose(v, cb[part][k], atol=1e-6, rtol=0), (part, k)


@pytest.fixture(scope="module")
def trained(hf_root):
    """An uninterrupted map-style run of 8 steps (5 per epoch) on the save_to_disk folder."""
    run = hf_root / "full"
    with pytest.warns(Warning, match="train:7"):
        summary = train(cfg_with(*HF, f"data.hf_path={hf_root / 'disk'}", "optimization.max_steps=8"), run)
    return run, summary


@pytest.mark.parametrize("kind", ["disk", "parquet"])
def test_a_split_reads_as_a_labelled_dataset_with_unreadable_rows_named(hf_root, kind):
    ds = open_images("hf", hf_root / kind, split="train")
    assert len(ds) == N_TRAIN and ds.classes == ["cat", "dog"] and ds.targets[:4] == [0, 1, 0, 1]
    img, label = ds[0]
    assert img.size == (20, 20) and img.mode == "RGB" and label == 0
    with pytest.warns(Warning, match="train:7"):
        assert ds[BAD] is None
    bad = ds.read(BAD)
    assert isinstance(bad, Unreadable) and bad.source == "train:7"
    probe = probe_images(ds)
    assert probe.readable == 16 and probe.colour
    # through the loader's worker processes (the dataset travels to them pickled)
    ds.transform = PILToTensor()
    loader, sampler = build_loader(ds, 8, num_workers=2, seed=0)
    sampler.set_epoch(0)
    batches = list(loader)
    assert sum(len(y) for _, y, _ in batches) == N_TRAIN - 1 and sum(len(k) for _, _, k in batches) == 1
    assert len(open_images("hf", hf_root / kind, split="validation", limit=5)) == 5


def test_missing_split_column_or_package_is_one_line_naming_what_exists(hf_root, tmp_path, monkeypatch, capsys):
    with pytest.raises(DataError, match=r"no split 'test' \(its splits: train, validation\)"):
        open_images("hf", hf_root / "disk", split="test")
    with pytest.raises(DataError, match=r"no split 'test' \(its splits: train, validation\)"):
        open_images("hf", hf_root / "parquet", split="test")
    with pytest.raises(DataError, match=r"no column 'img' \(data.image_column\); its columns: image, label, idx"):
        open_images("hf", hf_root / "disk", image_column="img")
    no_images = datasets.Dataset.from_dict({"text": ["a", "b"]})
    no_images.save_to_disk(str(tmp_path / "text"))
    with pytest.raises(DataError, match=r"no column has the Image feature \(its columns: text \(Value\)\)"):
        open_images("hf", tmp_path / "text")
    with pytest.raises(DataError, match="does not exist"):
        open_images("hf", tmp_path / "nowhere")
    # the command line: one line naming the splits, exit status 1
    capsys.readouterr()
    assert main(["extract", str(tmp_path / "model"), "--dataset", "hf", "--hf-path", str(hf_root / "disk"),
                 "--split", "test", "--out", str(tmp_path / "f.npy")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ijepa: data error:") and "its splits: train, validation" in err
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match=r"pip install 'ijepa\[hf\]'"):
        hf_datasets()


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_colour_images_for_a_one_channel_model_stop_before_training(hf_root, tmp_path, streaming):
    cfg = cfg_with("data.dataset=hf", f"data.hf_path={hf_root / 'disk'}", f"data.streaming={streaming}",
                   "data.limit=null", "data.batch_size=8")  # the CPU default's 1 channel
    with pytest.raises(DataError, match="holds colour images but data.in_chans is 1"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "jepa-latest.pth.tar").exists()


def test_map_style_training_resumes_exactly(hf_root, trained):
    full, summary = trained
    assert summary["steps"] == 8 and summary["skipped_files"] == 1 and list(summary["skipped"]) == ["train:7"]
    split = hf_root / "split"
    cfg = (*HF, f"data.hf_path={hf_root / 'disk'}")
    with pytest.warns(Warning, match="train:7"):
        train(cfg_with(*cfg, "optimization.max_steps=3"), split)
        train(cfg_with(*cfg, "optimization.max_steps=8"), split)  # mid-epoch 0 to epoch 1
    assert_same_run(full, split)


def test_streaming_training_resumes_exactly(hf_root, tmp_path):
    """A stream in its own order resumes from the checkpoint's stream state; one through a shuffle buffer (and
    decoded by two processes) by reading its epoch again up to the checkpoint. Both exactly."""
    cfg = (*HF, f"data.hf_path={hf_root / 'parquet'}", "data.streaming=true", "data.hf_shuffle_buffer=0")
    full, split = tmp_path / "full", tmp_path / "split"
    with pytest.warns(Warning, match="train:epoch"):
        summary = train(cfg_with(*cfg, "optimization.max_steps=8"), full)
        train(cfg_with(*cfg, "optimization.max_steps=3"), split)
    assert summary["steps"] == 8 and summary["skipped_files"] == 2  # the bad row, named per epoch position
    state = load_checkpoint(split / "jepa-latest.pth.tar")["data_state"]
    assert state["world_size"] == 1 and state["ranks"][0]["epoch"] == 0 and state["ranks"][0]["batch"] == 3
    with pytest.warns(Warning, match="train:epoch"):
        train(cfg_with(*cfg, "optimization.max_steps=8"), split)
    assert_same_run(full, split)
    shuffled = (*cfg[:-1], "data.hf_shuffle_buffer=16", "data.num_workers=2")
    train(cfg_with(*shuffled, "optimization.max_steps=7"), tmp_path / "shuffled")
    train(cfg_with(*shuffled, "optimization.max_steps=3"), tmp_path / "resumed")
    train(cfg_with(*shuffled, "optimization.max_steps=7"), tmp_path / "resumed")
    assert_same_run(tmp_path / "shuffled", tmp_path / "resumed")


def _ddp_split(rank: int, world: int, init_file: str, root: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from ijepa.data.hf_stream import HFStreamPipeline

    cfg = cfg_with(*HF, f"data.hf_path={root}/disk", "data.label_column=idx", "data.streaming=true",
                   "data.hf_shuffle_buffer=8", "data.batch_size=4").data
    pipe = HFStreamPipeline(cfg, rank, world, 0, torch.device("cpu"), (0.5,) * 3, (0.5,) * 3)
    streamed = [int(y) for _, labels, skipped in pipe.stream.batches(1) for y in labels]
    state = pipe.state_dict()  # collective: every rank's stream state gathered
    ds = open_images("hf", f"{root}/disk", split="train", label_column="idx", transform=PILToTensor())
    loader, sampler = build_loader(ds, 4, rank=rank, world_size=world, seed=0)
    sampler.set_epoch(1)
    mapped = [int(y) for _, labels, _ in loader for y in labels]
    seen = [None] * world
    torch.distributed.all_gather_object(seen, {"streamed": streamed, "mapped": mapped, "steps": pipe.steps_per_epoch})
    if rank == 0:
        torch.save({"seen": seen, "state": state}, Path(out) / "seen.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two processes importing torch and datasets: ~20 s on 2 cores
def test_two_processes_split_an_epoch_without_repeating_an_image(hf_root, tmp_path):
    torch.multiprocessing.spawn(_ddp_split, args=(2, str(tmp_path / "init"), str(hf_root), str(tmp_path)), nprocs=2)
    got = torch.load(tmp_path / "seen.pt", weights_only=True)
    seen, state = got["seen"], got["state"]
    for key in ("streamed", "mapped"):
        a, b = seen[0][key], seen[1][key]
        assert not set(a) & set(b), key  # each rank its own images
        assert len(set(a)) == len(a) and len(set(b)) == len(b), key  # none twice
        assert sorted(a + b) == [i for i in range(N_TRAIN) if i != BAD], key  # every one but the unreadable row
    assert seen[0]["steps"] == seen[1]["steps"] == N_TRAIN // 2 // 4
    assert state["world_size"] == 2 and all(s["batch"] == 5 and s["epoch"] == 1 for s in state["ranks"])


def test_eval_extract_and_finetune_read_a_hf_dataset(hf_root, trained, tmp_path, capsys):
    run, _ = trained
    disk = str(hf_root / "disk")
    assert main(["eval", str(run), "--dataset", "hf", "--hf-path", disk, "--protocol", "knn",
                 "--baselines", "", "--no-progress", "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["dataset"] == disk and 0 <= result["models"]["pretrained"]["knn"]["accuracy"] <= 1
    out = tmp_path / "val.npy"
    assert main(["extract", str(run), "--dataset", "hf", "--hf-path", disk, "--split", "validation",
                 "--out", str(out)]) == 0
    fs = load_features(out)
    assert fs.features.shape[0] == N_VAL and fs.labels.tolist() == [i % 2 for i in range(N_VAL)]
    assert fs.classes == ["cat", "dog"] and fs.rows[:2] == ["validation:0", "validation:1"]
    assert fs.meta["dataset"] == "hf" and fs.meta["split"] == "validation"
    # parquet, without --split: two splits, so it asks
    assert main(["extract", str(run), "--dataset", "hf", "--hf-path", str(hf_root / "parquet"),
                 "--out", str(out)]) == 1
    assert "--split train|validation" in capsys.readouterr().err
    assert main(["finetune", str(run), "--dataset", "hf", "--hf-path", disk, "--out", str(tmp_path / "ft"),
                 "--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu"]) == 0
    assert "train / validation" in capsys.readouterr().out
