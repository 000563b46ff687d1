"""Feature files that say what they hold: written and read back in one call, with row sources, classes,
skipped inputs and how they were made; a record from another extraction is refused."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ijepa.errors import DataError
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
