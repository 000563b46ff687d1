"""One folder convention for every command (data/layout.py), and folders that cannot fool the reader: links that
loop or repeat the tree, split folders read as classes, colour images for a 1-channel model, too few or no readable
images, non-images and decompression bombs in shards, an index naming files outside its folder."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
from conftest import cfg_with
from PIL import Image

from ijepa.cli import build_parser, main
from ijepa.data import layout
from ijepa.data.datasets import FlatImageFolder, ImageFolderDataset
from ijepa.data.decode import DEFAULT_MAX_PIXELS, Unreadable
from ijepa.data.shards import cli as shards_cli
from ijepa.data.shards.reader import ShardDataset
from ijepa.data.shards.writer import write_shards
from ijepa.data.sources import choose_split, held_out_split, open_images, split_root
from ijepa.errors import ConfigError, DataError
from ijepa.train.distributed import DistInfo
from ijepa.train.inputs import build_pipeline


def _images(folder: Path, n: int, colour: bool = True, size: int = 8, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        v = (29 * i) % 256
        if colour:
            Image.new("RGB", (size, size), (v, 255 - v, (7 * i) % 256)).save(folder / f"{i:03d}.png")
        else:
            Image.new("L", (size, size), v).save(folder / f"{i:03d}.png")
    return folder


def _classes(root: Path, per_class: int = 4, names=("a", "b"), **kw) -> Path:
    for c, name in enumerate(names):
        _images(root / name, per_class, start=c * per_class, **kw)
    return root


def _bomb(path: Path, side: int = 20_000) -> Path:
    """A PNG whose header says side x side pixels; PIL opens it without decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ijepa: "), err
    return err


# ------------------------------------------------------------------------------------------------ links

WALK = textwrap.dedent("""
    import json, sys
    from ijepa.data.datasets import FlatImageFolder, ImageFolderDataset
    root, follow = sys.argv[1], sys.argv[2] == "1"
    ds = ImageFolderDataset(root, follow_symlinks=follow)
    wrong = sum(ds.classes[label] != p[len(root) + 1:].split("/")[0] for p, label in ds.samples)
    print(json.dumps({"labelled": len(ds), "wrong": wrong, "flat": len(FlatImageFolder(root, follow_symlinks=follow))}))
""")


def _walk(root: Path, follow: bool) -> dict:
    """The walk in a child process under a deadline: a walk that loops fails the test instead of hanging it."""
    r = subprocess.run([sys.executable, "-c", WALK, str(root), "1" if follow else "0"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("follow", [False, True])
def test_links_back_into_the_tree_neither_repeat_images_nor_loop(tmp_path, follow):
    root = _classes(tmp_path / "set", per_class=20)
    os.symlink("..", root / "a" / "up")  # a `..` link: the whole tree again, under class a
    (root / "a" / "x").mkdir()
    (root / "b" / "y").mkdir()
    os.symlink("../../b/y", root / "a" / "x" / "to_y")  # two links to each other: endless with os.walk
    os.symlink("../../a/x", root / "b" / "y" / "to_x")
    assert _walk(root, follow) == {"labelled": 40, "wrong": 0, "flat": 40}


def test_links_out_of_the_tree_are_read_once_and_only_when_asked(tmp_path, caplog):
    root = _classes(tmp_path / "set", per_class=3)
    _images(tmp_path / "more" / "one", 2, start=50)
    _images(tmp_path / "more" / "two", 2, start=60)
    os.symlink("../two", tmp_path / "more" / "one" / "loop")  # outside the tree, and looping there too
    os.symlink("../one", tmp_path / "more" / "two" / "loop")
    os.symlink(tmp_path / "more" / "one", root / "a" / "more")
    os.symlink(tmp_path / "more" / "one", root / "b" / "same_again")
    os.symlink(root / "a" / "000.png", root / "b" / "linked.png")  # a link to an image file is read
    assert len(ImageFolderDataset(root)) == 7
    assert "were not followed" in caplog.text and "follow_symlinks" in caplog.text
    ds = ImageFolderDataset(root, follow_symlinks=True)
    assert len(ds) == 11 and ds.targets.count(0) == 7  # class a reads more/one and, through it, more/two, once
    empty = tmp_path / "links_only"
    empty.mkdir()
    os.symlink(tmp_path / "more" / "one", empty / "one")
    with pytest.raises(DataError, match="not followed .*follow_symlinks"):
        FlatImageFolder(empty)
    assert len(FlatImageFolder(empty, follow_symlinks=True)) == 4


# ------------------------------------------------------------------------------------------------ splits


def test_one_split_convention_for_every_kind(tmp_path):
    root = tmp_path / "set"
    _classes(root / "train", per_class=3)
    _classes(root / "val", per_class=2)
    assert open_images("imagefolder", root).classes == ["a", "b"]  # train reads train/
    assert len(open_images("imagefolder", root, split="val")) == 4
    assert len(open_images("folder", root, split="val")) == 4 and len(open_images("folder", root, split=None)) == 10
    assert held_out_split(root) == "val" and choose_split("imagefolder", root, "val") == "val"
    with pytest.raises(DataError, match=r"split folders \(train, val\).*--split train\|val"):
        choose_split("imagefolder", root, None)
    with pytest.raises(DataError, match=r"no test/ folder .*its split folders are train, val"):
        split_root("imagefolder", root, "test")
    with pytest.raises(DataError, match=r"holds split folders \(train, val\), not classes"):
        ImageFolderDataset(root)  # never classes named train and val
    plain = _classes(tmp_path / "plain", per_class=2)
    assert split_root("imagefolder", plain, "train") == plain and choose_split("folder", plain, None) is None
    with pytest.raises(DataError, match="no val/ folder .*it has no split folders"):
        open_images("imagefolder", plain, split="val")
    with pytest.raises(DataError, match="Fashion-MNIST has two splits"):
        open_images("fashion_mnist", split="val")


def _encoder_file(tmp_path: Path) -> Path:
    from ijepa.interop import export
    from ijepa.models.vit import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=1)
    return export(enc, tmp_path / "enc.safetensors", "ijepa", source="tiny test encoder")


def test_extract_reads_the_root_train_reads_and_asks_which_split(tmp_path, capsys):
    from ijepa.eval.feature_file import load_features

    root = tmp_path / "img"
    _classes(root / "train", per_class=3)
    _classes(root / "val", per_class=2)
    model = _encoder_file(tmp_path)
    args = ["extract", str(model), "--dataset", "imagefolder", "--root", str(root), "--dtype", "fp32"]
    err = _one_line_error([*args, "--out", str(tmp_path / "f.npy")], capsys)
    assert "data error" in err and "--split train|val" in err
    assert main([*args, "--split", "train", "--out", str(tmp_path / "f.safetensors")]) == 0
    capsys.readouterr()
    back = load_features(tmp_path / "f.safetensors")
    assert back.classes == ["a", "b"] and back.labels.tolist() == [0, 0, 0, 1, 1, 1]  # by class, not by split
    assert back.meta["split"] == "train" and back.rows[0] == "a/000.png"
    err = _one_line_error([*args, "--split", "test", "--out", str(tmp_path / "g.npy")], capsys)
    assert "no test/ folder" in err


def test_eval_and_finetune_need_labels_and_read_the_split_folders(tmp_path, capsys):
    from ijepa.eval.run import eval_folders, evaluate

    root = tmp_path / "img"
    _classes(root / "train", per_class=4)
    _classes(root / "test", per_class=2)
    assert eval_folders(str(root), None, None, None) == (root / "train", root / "test", "img")
    for cmd in (["eval", "m", "--dataset", "folder", "--root", str(root)],
                ["finetune", "m", "--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "o")]):
        err = _one_line_error(cmd, capsys)
        assert "--dataset imagefolder" in err and "unlabelled" in err
    res = evaluate(str(_encoder_file(tmp_path)), ["knn"], dataset="imagefolder", root=str(root), progress=False)
    assert res["dataset"] == "img" and 0 <= res["models"]["pretrained"]["knn"]["accuracy"] <= 1
    with pytest.raises(DataError, match="no train/ and val/"):
        evaluate("m", ["knn"], dataset="imagefolder", root=str(root / "train"))
    with pytest.raises(ConfigError, match="give val or test"):
        evaluate("m", ["knn"], dataset="imagefolder", root=str(root), split="train")


def test_every_folder_help_says_the_same_words():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    squeezed = lambda text: "".join(text.split())  # argparse wraps lines, at hyphens too
    for name in ("eval", "extract", "finetune", "shards"):
        text = squeezed(sub[name].format_help())
        assert squeezed(layout.LABELLED_KIND) in text and squeezed(layout.UNLABELLED_KIND) in text, name
        assert squeezed(layout.SPLIT_FOLDERS) in text, name
    assert "seededrandomN" in squeezed(sub["eval"].format_help())
    assert shards_cli.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS and layout.SPLITS == ("train", "val", "test")


# ------------------------------------------------------------------------------------------------ training data


def _data_cfg(root: Path, *extra: str):
    return cfg_with("data.dataset=imagefolder", f"data.root_path={root}", "data.num_workers=0", "data.limit=null",
                    *extra).data


def test_colour_images_never_train_a_one_channel_model(tmp_path, capsys):
    colour = _classes(tmp_path / "colour", per_class=10)
    with pytest.raises(DataError, match=r"colour images but data.in_chans is 1 .*data.in_chans=3"):
        build_pipeline(_data_cfg(colour), DistInfo(), 0, torch.device("cpu"))
    err = _one_line_error(["train", "--config", "fmnist_cpu", "--out", str(tmp_path / "run"),
                           "data.dataset=imagefolder", f"data.root_path={colour}", "data.batch_size=16"], capsys)
    assert "data.in_chans" in err and not (tmp_path / "run" / "jepa-latest.pth.tar").exists()
    grey = _classes(tmp_path / "grey", per_class=10, colour=False)
    data = build_pipeline(_data_cfg(grey), DistInfo(), 0, torch.device("cpu"))  # grey images, 1 channel: fine
    assert data.input_spec.in_chans == 1 and data.steps_per_epoch == 1
    rgb = build_pipeline(_data_cfg(colour, "data.in_chans=3", "data.mean=null", "data.std=null"), DistInfo(), 0,
                         torch.device("cpu"))
    assert next(iter(rgb.epoch(0)))[0].shape[1] == 3


def test_too_few_or_no_readable_images_is_one_line_before_any_model(tmp_path):
    small = _classes(tmp_path / "small", per_class=2, colour=False)
    with pytest.raises(DataError, match=r"small'?: 4 images are fewer than one batch of 16 per process × 1"):
        build_pipeline(_data_cfg(small), DistInfo(), 0, torch.device("cpu"))
    broken = tmp_path / "broken" / "a"
    broken.mkdir(parents=True)
    for i in range(20):
        (broken / f"{i}.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"none of its 20 images can be read \(first: .*0.png"):
        build_pipeline(_data_cfg(broken.parent), DistInfo(), 0, torch.device("cpu"))


def test_the_final_line_names_every_file_the_warnings_name(tmp_path):
    from ijepa.train.loop import train

    root = _images(tmp_path / "imgs", 22, size=20)
    for name in ("000.png", "021.png"):  # first and last: one batch of 8 meets at most one of them
        (root / name).write_bytes(b"not an image")
    cfg = cfg_with("data.dataset=folder", f"data.root_path={root}", "data.crop_size=16", "data.in_chans=3",
                   "data.num_workers=0", "data.limit=null", "data.batch_size=8", "optimization.max_steps=1",
                   "mask.patch_size=4", "logging.online_knn=false")
    with pytest.warns(Warning) as warned:
        summary = train(cfg, tmp_path / "run")
    named = {name for name in ("000.png", "021.png") if any(name in str(w.message) for w in warned)}
    assert named == {"000.png", "021.png"}  # the fixed monitoring batch reads both
    assert summary["skipped_files"] == 2 and sorted(summary["skipped"]) == ["000.png", "021.png"]


# ------------------------------------------------------------------------------------------------ shards


def test_shards_leave_out_non_images_and_bombs_and_name_every_file(tmp_path, capsys):
    src = _classes(tmp_path / "src", per_class=3)
    (src / "a" / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    _bomb(src / "b" / "bomb.png")
    _images(src, 1, start=90)  # 090.png directly in SRC: in no class folder
    with pytest.warns(Warning):
        assert shards_cli.main([str(src), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("6 images in 1 shards") and "3 file(s) left out" in out[0]
    assert out[-1].startswith("left out 3 file(s): 090.png (outside any class folder")
    assert "a/fake.png (not an image:" in out[-1] and "b/bomb.png (image above the limit of 100,000,000" in out[-1]
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["num_samples"] == 6 and index["skipped_files"] == 3 and len(index["skipped"]) == 3
    # packed as stored, the bomb is still skipped when read: the reader keeps the folders' pixel limit
    with pytest.warns(Warning) as warned:
        write_shards(src, tmp_path / "raw", check_images=False)
        items = list(ShardDataset(tmp_path / "raw", shuffle=False, name_skipped=True))
    assert any("above the limit" in str(w.message) for w in warned)  # from the reader: the writer did not check
    assert sum(not isinstance(it, Unreadable) for it in items) == 6 and len(items) == 8


def test_shards_read_one_split_and_refuse_an_index_naming_files_elsewhere(tmp_path, capsys):
    src = tmp_path / "src"
    _classes(src / "train", per_class=2)
    _classes(src / "val", per_class=1)
    err = _one_line_error(["shards", str(src), str(tmp_path / "s")], capsys)
    assert "--split train|val" in err
    assert main(["shards", str(src), str(tmp_path / "s"), "--split", "val"]) == 0
    assert "2 images in 1 shards" in capsys.readouterr().out
    index_path = tmp_path / "s" / "index.json"
    index = json.loads(index_path.read_text())
    index["shards"][0]["name"] = "../elsewhere.tar"
    index_path.write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"names '../elsewhere.tar', which is not a file in its own folder"):
        ShardDataset(tmp_path / "s")
