"""Feature files that say what they hold: written and read back in one call, with row sources, classes,
skipped inputs and how they were made; a record from another extraction is refused."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch.utils.data import Subset

from ijepa import build_encoder
from ijepa.data.datasets import CorruptImageWarning, FlatImageFolder, ImageFolderDataset, TensorImageDataset
from ijepa.errors import DataError
from ijepa.eval.extract import extract_feature_set
from ijepa.eval.feature_file import FeatureSet, load_features, record_path, save_features


def _set(n=4):
    return FeatureSet(torch.randn(n, 3), torch.arange(n) % 2, rows=[f"c{i % 2}/img_{i}.png" for i in range(n)],
                      classes=["c0", "c1"], skipped=[{"source": "c1/bad.png", "reason": "UnidentifiedImageError: x"}],
                      meta={"source": "run/jepa-latest.pth.tar", "pooling": "mean",
                            "input_spec": {"image_size": (32, 32), "in_chans": 3}, "root": "/data"})


@pytest.mark.parametrize("ext", [".npy", ".safetensors"])
def test_a_feature_set_round_trips_with_its_record(tmp_path, ext):
    fs = _set()
    path = save_features(tmp_path / f"feats{ext}", fs)
    back = load_features(path)
    assert torch.equal(back.features, fs.features) and torch.equal(back.labels, fs.labels)
    assert back.rows == fs.rows and back.classes == ["c0", "c1"] and back.skipped == fs.skipped
    assert back.meta["input_spec"] == {"image_size": [32, 32], "in_chans": 3} and back.meta["pooling"] == "mean"
    if ext == ".npy":
        rec = json.loads(record_path(path).read_text())  # a plain JSON sidecar, feats.json
        assert record_path(path).name == "feats.json" and rec["rows"] == fs.rows and rec["n_rows"] == 4
    else:
        with safe_open(str(path), "pt") as f:  # any safetensors reader finds it in the metadata
            assert json.loads(f.metadata()["ijepa_features"])["rows"] == fs.rows


@pytest.mark.parametrize("ext", [".npy", ".safetensors"])
def test_bare_features_get_index_rows_and_old_files_still_load(tmp_path, ext):
    feats, labels = torch.randn(5, 3), torch.arange(5)
    path = save_features(tmp_path / f"feats{ext}", feats, labels)
    back = load_features(path)
    assert torch.equal(back.features, feats) and torch.equal(back.labels, labels) and back.rows == [0, 1, 2, 3, 4]
    if ext == ".npy":  # a file from before records: no sidecar
        record_path(path).unlink()
        old = load_features(path)
        assert old.rows is None and old.meta == {} and torch.equal(old.labels, labels)


def test_a_record_from_another_extraction_is_refused(tmp_path):
    path = save_features(tmp_path / "feats.npy", _set(4))
    np.save(path, np.zeros((3, 3), np.float32))  # features rewritten by something else
    with pytest.raises(DataError, match="describes 4 rows but the file holds 3"):
        load_features(path)


def test_bad_inputs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="unsupported feature file extension"):
        save_features(tmp_path / "feats.txt", torch.zeros(2, 2))
    with pytest.raises(DataError, match="no feature file"):
        load_features(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="3 feature rows but 2 row sources"):
        FeatureSet(torch.zeros(3, 2), rows=["a", "b"])
    save_features(tmp_path / "f.npy", torch.zeros(2, 2))
    (tmp_path / "f.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_features(tmp_path / "f.npy")


def test_saving_without_labels_removes_stale_labels(tmp_path):
    save_features(tmp_path / "f.npy", torch.zeros(2, 2), torch.arange(2))
    save_features(tmp_path / "f.npy", torch.zeros(3, 2))
    assert load_features(tmp_path / "f.npy").labels is None


class MeanColour(torch.nn.Module):
    """A deterministic 'encoder': one token per image, its mean colour (in the input's normalised units)."""

    source = "mean-colour"
    input_spec = {"image_size": (8, 8), "in_chans": 3, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def forward(self, x):
        return x.mean(dim=(2, 3))[:, None, :]


def _colour_folder(tmp_path):
    """12 solid-colour PNGs in two class folders, with unreadable files between them in sort order."""
    root = tmp_path / "imgs"
    colours = {}
    for i in range(12):
        cls = "a" if i < 7 else "b"
        (root / cls).mkdir(parents=True, exist_ok=True)
        rel = f"{cls}/img_{i:02d}.png"
        colours[rel] = (20 * i, 255 - 20 * i, (37 * i) % 256)
        Image.new("RGB", (8 + i, 8), colours[rel]).save(root / rel)  # sizes differ too
    (root / "a" / "img_02_bad.png").write_bytes(b"not an image")
    (root / "a" / "img_06_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = root / "b" / "img_09.png"
    (root / "b" / "img_09_torn.png").write_bytes(good.read_bytes()[:40])
    return root, colours


@pytest.mark.parametrize("ext", [".npy", ".safetensors"])
def test_extract_on_a_folder_with_unreadable_files_says_which_file_each_row_is(tmp_path, ext):
    root, colours = _colour_folder(tmp_path)
    ds = ImageFolderDataset(root)
    assert len(ds) == 15
    with pytest.warns(CorruptImageWarning):
        fs = extract_feature_set(MeanColour(), ds, batch_size=4, progress=False, dtype="fp32")
    assert fs.rows == sorted(colours)  # the 12 readable files, in the dataset's order, none lost or shifted
    assert [s["source"] for s in fs.skipped] == ["a/img_02_bad.png", "a/img_06_bad.jpg", "b/img_09_torn.png"]
    assert all(s["reason"] for s in fs.skipped) and "UnidentifiedImageError" in fs.skipped[0]["reason"]
    for i, rel in enumerate(fs.rows):  # row i is file rows[i]: its features are that file's colour
        assert torch.allclose(fs.features[i], torch.tensor(colours[rel]) / 255.0, atol=1e-6), rel
        assert fs.classes[int(fs.labels[i])] == rel.split("/")[0]
    assert fs.meta["source"] == "mean-colour" and fs.meta["pooling"] == "mean" and fs.meta["root"] == str(root)

    back = load_features(save_features(tmp_path / f"feats{ext}", fs))
    assert back.rows == fs.rows and back.skipped == fs.skipped and back.classes == ["a", "b"]
    assert torch.equal(back.features, fs.features) and torch.equal(back.labels, fs.labels)
    assert back.meta["input_spec"]["image_size"] == [8, 8]


def test_each_row_equals_that_file_extracted_alone_with_a_vit(tmp_path):
    root, _ = _colour_folder(tmp_path)
    enc = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=1)
    ds = FlatImageFolder(root)
    index = {ds.source(j): j for j in range(len(ds))}
    with pytest.warns(CorruptImageWarning):
        fs = extract_feature_set(enc, ds, batch_size=5, progress=False, dtype="fp32")
    assert len(fs) == 12 and len(fs.skipped) == 3
    for i, rel in enumerate(fs.rows):
        alone = extract_feature_set(enc, Subset(ds, [index[rel]]), progress=False, dtype="fp32")
        assert alone.rows == [rel] and torch.allclose(fs.features[i], alone.features[0], atol=1e-5), rel


def test_in_memory_rows_are_indices():
    imgs = torch.randint(0, 256, (6, 8, 8), dtype=torch.uint8)
    fs = extract_feature_set(MeanColour(), imgs, batch_size=4, progress=False)
    assert fs.rows == list(range(6)) and fs.skipped == [] and fs.labels is None
    sub = extract_feature_set(MeanColour(), Subset(TensorImageDataset(imgs, torch.arange(6) % 3), [5, 1, 3]),
                              progress=False)
    assert sub.rows == [5, 1, 3] and sub.labels.tolist() == [2, 1, 0]
    assert torch.equal(sub.features, fs.features[[5, 1, 3]])


def test_ijepa_extract_on_a_folder_writes_which_file_each_row_is(tmp_path, capsys):
    from ijepa.cli import main
    from ijepa.interop import export

    root, colours = _colour_folder(tmp_path)
    enc = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=1)
    model = export(enc, tmp_path / "enc.safetensors", "ijepa", source="tiny test encoder")
    with pytest.warns(CorruptImageWarning):
        assert main(["extract", str(model), "--dataset", "imagefolder", "--root", str(root), "--batch-size", "4",
                     "--dtype", "fp32", "--out", str(tmp_path / "f.safetensors")]) == 0
    assert "3 unreadable files skipped" in capsys.readouterr().out
    back = load_features(tmp_path / "f.safetensors")
    assert back.rows == sorted(colours) and back.classes == ["a", "b"] and len(back.features) == 12
    assert [s["source"] for s in back.skipped] == ["a/img_02_bad.png", "a/img_06_bad.jpg", "b/img_09_torn.png"]
    assert "tiny test encoder" in back.meta["source"] and back.meta["dataset"] == "imagefolder"
    ds = FlatImageFolder(root)
    alone = extract_feature_set(enc, Subset(ds, [ds.samples.index((str(root / back.rows[5]), -1))]),
                                progress=False, dtype="fp32")
    torch.testing.assert_close(back.features[5], alone.features[0], atol=1e-5, rtol=0)  # row 5 is file rows[5]
