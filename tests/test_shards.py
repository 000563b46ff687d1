"""ijepa.data.shards: writing tar shards from an image folder and streaming them back (ranks, workers, epochs,
exact resume, corrupt samples, truncated shards, clear errors). Tiny: 31 images of 6x4 pixels."""

from __future__ import annotations

import json
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader

from ijepa.cli import main as ijepa_main
from ijepa.data.datasets import CorruptImageWarning, ImageFolderDataset, collate_skip_corrupt
from ijepa.data.shards.cli import main
from ijepa.data.shards.format import ShardReadWarning, ShardsNotFoundError
from ijepa.data.shards.reader import ShardDataset, build_shard_loader
from ijepa.data.shards.writer import write_index, write_shards

CLASSES = ("apple", "bee", "cat")
PER_CLASS = 10
N = len(CLASSES) * PER_CLASS + 1  # + one corrupt file


def _key(img) -> bytes:
    """An image's identity: its pixels (every source image has its own colour)."""
    arr = img.numpy() if isinstance(img, torch.Tensor) else np.asarray(img).transpose(2, 0, 1)
    return np.ascontiguousarray(arr).tobytes()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            v = c * PER_CLASS + i
            Image.new("RGB", (6, 4), (8 * v, 255 - 8 * v, (37 * v) % 256)).save(root / name / f"img{i:02d}.png")
    (root / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not an image")
    return root


@pytest.fixture(scope="module")
def expected(src) -> dict[bytes, int]:
    """identity -> label for every decodable source image."""
    out = {}
    for path, label in ImageFolderDataset(src).samples:
        if "broken" not in path:
            with Image.open(path) as im:
                out[_key(im.convert("RGB"))] = label
    return out


@pytest.fixture(scope="module")
def shards(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(src, out, max_count=8, overwrite=True)
    return out


def _items(ds, **kw) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        return list(ds)


def _identities(items) -> list[bytes | None]:
    return [None if it is None else _key(it[0]) for it in items]


def _loader_batches(loader) -> list[list[bytes]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        return [[] if x is None else [_key(im) for im in x] for x, _, _ in loader]


def test_write_layout_index_and_raw_bytes(src, shards) -> None:
    index = json.loads((shards / "index.json").read_text())
    names = [s["name"] for s in index["shards"]]
    assert names == [f"shard-{i:06d}.tar" for i in range(4)]
    assert [s["count"] for s in index["shards"]] == [8, 8, 8, 7] and index["num_samples"] == N
    assert all(s["bytes"] == (shards / s["name"]).stat().st_size for s in index["shards"])
    assert json.loads((shards / "classes.json").read_text()) == list(CLASSES)
    assert not list(shards.glob(".*"))  # no temporary files left behind
    sources = ImageFolderDataset(src).samples
    with tarfile.open(shards / names[0]) as tar:
        members = tar.getmembers()
        assert [m.name.split(".")[1] for m in members[:4]] == ["png", "cls", "png", "cls"]
        key = members[0].name.split(".")[0]
        path, label = sources[int(key)]  # the key is the index into the folder's sorted samples
        assert tar.extractfile(members[0]).read() == Path(path).read_bytes()  # stored as is, not re-encoded
        assert int(tar.extractfile(members[1]).read()) == label
    # The sample order is shuffled across shards, so a shard is not one class.
    with tarfile.open(shards / names[0]) as tar:
        labels = {int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls")}
    assert len(labels) > 1


def test_every_image_read_back_once_with_its_label(shards, expected) -> None:
    ds = ShardDataset(shards, shuffle_buffer=5)
    assert len(ds) == N and ds.classes == list(CLASSES)
    with pytest.warns(CorruptImageWarning, match=r"shard-00000\d\.tar:\d{9}"):
        items = list(ds)
    assert len(items) == N and sum(it is None for it in items) == 1
    got = {_key(img): label for img, label in (it for it in items if it is not None)}
    assert got == expected  # every decodable image exactly once (dict sizes match the 30 distinct images)
    # Through a DataLoader, the corrupt sample is dropped and counted by the collate.
    ds = ShardDataset(shards, T.PILToTensor(), shuffle_buffer=5)
    loader = DataLoader(ds, batch_size=8, collate_fn=collate_skip_corrupt)
    with pytest.warns(CorruptImageWarning):
        batches = list(loader)
    assert sum(len(b[2]) for b in batches) == 1
    assert sum(len(b[0]) for b in batches) == N - 1
    labels = torch.cat([b[1] for b in batches]).tolist()
    assert sorted(labels) == sorted(expected.values())


def test_ranks_read_disjoint_samples_covering_the_epoch(shards, expected) -> None:
    # The glob selects 3 shards (24 samples), which 2 ranks split evenly: together they read everything.
    per_rank = [_identities(_items(ShardDataset(str(shards / "shard-00000[0-2].tar"), rank=r, world_size=2)))
                for r in range(2)]
    assert [len(p) for p in per_rank] == [12, 12]
    seen = [k for p in per_rank for k in p if k is not None]
    assert len(set(seen)) == len(seen) == 24 - sum(k is None for p in per_rank for k in p)
    # 31 samples over 2 ranks: 15 each (equal counts keep DDP in step), one left out, nothing read twice.
    dss = [ShardDataset(shards, rank=r, world_size=2) for r in range(2)]
    plans = [d.plan() for d in dss]
    spans = [(n, i) for p in plans for n, a, b in p for i in range(a, b)]
    assert len(spans) == len(set(spans)) == 30
    assert {n for n, _, _ in plans[0]}.isdisjoint({n for n, _, _ in plans[1][1:]})  # share at most a boundary
    ids = [_identities(_items(d)) for d in dss]
    assert [len(i) for i in ids] == [15, 15]
    valid = [k for i in ids for k in i if k is not None]
    assert len(valid) == len(set(valid)) and set(valid) <= set(expected)


def test_two_workers_do_not_duplicate_and_len_is_exact(shards, expected) -> None:
    ds = ShardDataset(shards, T.PILToTensor(), shuffle_buffer=4)
    loader = build_shard_loader(ds, batch_size=3, num_workers=2)
    assert len(ds) == 30 and len(loader) == 10  # cut to whole batches: 31 // 3 = 10
    batches = _loader_batches(loader)
    assert len(batches) == len(loader)
    flat = [k for b in batches for k in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(expected)
    assert len(flat) >= 29  # 30 samples, at most one of them the corrupt file


def test_epoch_changes_shard_order_and_is_reproducible(shards) -> None:
    ds = ShardDataset(shards, shuffle_buffer=3)
    assert sorted(ds.epoch_order(0)) == sorted(ds.epoch_order(1)) == [0, 1, 2, 3]
    assert ds.epoch_order(0) != ds.epoch_order(1)
    assert ds.epoch_order(0) == ShardDataset(shards, rank=1, world_size=2).epoch_order(0)  # same on all ranks
    first = _identities(_items(ds))
    ds.set_epoch(1)
    second = _identities(_items(ds))
    assert first != second and sorted(first, key=str) == sorted(second, key=str)
    ds.set_epoch(0)
    assert _identities(_items(ds)) == first
    unshuffled = ShardDataset(shards, shuffle=False)
    assert [n for n, _, _ in unshuffled.plan()] == [f"shard-{i:06d}.tar" for i in range(4)]


@pytest.mark.parametrize("workers", [0, 2])
def test_set_start_resumes_exactly(shards, workers) -> None:
    ds = ShardDataset(shards, T.PILToTensor(), shuffle_buffer=4, rank=1, world_size=2, seed=3)
    loader = build_shard_loader(ds, batch_size=2, num_workers=workers)
    ds.set_epoch(2)
    full = _loader_batches(loader)
    assert len(full) == len(loader) == 7
    ds.set_epoch(2)
    ds.set_start(3, 2)
    assert len(loader) == 4
    assert _loader_batches(loader) == full[3:]
    with pytest.raises(ValueError, match="batch_size"):
        ds.set_start(1, 5)


def test_transforms_are_seeded_by_position_and_leave_the_global_rng_alone(shards) -> None:
    tf = T.Compose([T.RandomResizedCrop(4, scale=(0.2, 1.0)), T.PILToTensor()])
    ds = ShardDataset(shards, tf, shuffle=False)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = _identities(_items(ds))
    assert torch.equal(torch.get_rng_state(), before)
    assert _identities(_items(ds)) == a


def test_truncated_shard_yields_none_for_what_is_lost(shards, tmp_path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    victim = bad / "shard-000001.tar"
    with tarfile.open(victim) as tar:
        first_is_corrupt = tar.getmembers()[0].name.startswith("000000010.")  # bee/broken.png sorts 10th
    # Each tiny sample takes 4 blocks (2048 bytes): keep the first, cut the second inside its image data.
    victim.write_bytes(victim.read_bytes()[:2048 + 700])
    with pytest.warns(ShardReadWarning, match="shard-000001.tar is 2748 bytes"):
        ds = ShardDataset(bad, shuffle=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(ds)
    shard_warnings = [str(w.message) for w in caught if issubclass(w.category, ShardReadWarning)]
    assert len(shard_warnings) == 1 and "shard-000001.tar cannot be read after sample 1" in shard_warnings[0]
    assert len(items) == N  # the epoch keeps its length: lost samples count as corrupt
    assert (items[8] is None) == first_is_corrupt and all(it is None for it in items[9:16])
    # A shard cut at a member boundary, or emptied completely, is not fatal either.
    for size in (1024, 0):  # 1024: the first image without its label, which is not guessed
        victim.write_bytes((shards / "shard-000001.tar").read_bytes()[:size])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            items = list(ShardDataset(bad, shuffle=False))
        assert len(items) == N and all(it is None for it in items[8:16])


def test_clear_errors_when_there_are_no_shards(shards, tmp_path) -> None:
    with pytest.raises(ShardsNotFoundError, match="does not exist.*ijepa shards"):
        ShardDataset(tmp_path / "nowhere")
    with pytest.raises(ShardsNotFoundError, match="no shards in.*ijepa shards"):
        ShardDataset(tmp_path)
    with pytest.raises(ShardsNotFoundError, match="no shards match"):
        ShardDataset(str(tmp_path / "x-*.tar"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(shards / "shard-000000.tar", foreign)
    with pytest.raises(ShardsNotFoundError, match="no index.json.*write_index"):
        ShardDataset(foreign)
    assert isinstance(ShardsNotFoundError("x"), FileNotFoundError)  # printed as a user error by the CLI
    gone = tmp_path / "gone"
    shutil.copytree(shards, gone)
    (gone / "shard-000002.tar").unlink()
    with pytest.raises(ShardsNotFoundError, match="missing.*shard-000002.tar"):
        ShardDataset(gone)


def test_write_index_for_shards_from_elsewhere(shards, tmp_path) -> None:
    d = tmp_path / "wds"
    shutil.copytree(shards, d)
    (d / "index.json").unlink()
    write_index(d)
    index = json.loads((d / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [8, 8, 8, 7] and index["labelled"] is True
    assert len(_items(ShardDataset(d))) == N


def test_unlabelled_and_byte_limit(src, tmp_path) -> None:
    paths = write_shards(src, tmp_path / "u", labelled=False, max_bytes=1)  # every sample alone in a shard
    assert len(paths) == N and not (tmp_path / "u" / "classes.json").exists()
    with tarfile.open(paths[0]) as tar:
        assert len(tar.getmembers()) == 1 and tar.getmembers()[0].name.endswith(".png")
    items = _items(ShardDataset(tmp_path / "u"))
    assert {it[1] for it in items if it is not None} == {-1}


def test_deterministic_refuses_to_clobber_and_overwrites_cleanly(src, shards, tmp_path, capsys) -> None:
    again = write_shards(src, tmp_path / "again", max_count=8)
    assert [p.read_bytes() for p in again] == [(shards / p.name).read_bytes() for p in again]
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards(src, tmp_path / "again")
    capsys.readouterr()
    assert ijepa_main(["shards", str(src), str(tmp_path / "again")]) == 1  # one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("ijepa: output exists: ") and "--overwrite" in err and err.count("\n") == 1
    assert main([str(src), str(tmp_path / "again"), "--max-count", "20", "--overwrite"]) == 0
    assert "30 images in 2 shards" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "again").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_limit_keeps_the_first_samples_in_index_order(shards) -> None:
    everything = _identities(_items(ShardDataset(shards, shuffle=False)))
    first = _identities(_items(ShardDataset(shards, shuffle=False, limit=11)))  # 8 from shard 0, 3 from shard 1
    assert first == everything[:11]
    shuffled = ShardDataset(shards, shuffle_buffer=4, limit=11)
    assert len(shuffled) == 11
    assert sorted(_identities(_items(shuffled)), key=str) == sorted(everything[:11], key=str)
    assert len(ShardDataset(shards, limit=10_000)) == N  # a limit above the total keeps everything
    with pytest.raises(ValueError, match="limit"):
        ShardDataset(shards, limit=0)
