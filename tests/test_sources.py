"""The one data-source factory: every kind by name, its limits and splits, and a wrong path named at once."""

import pytest
import torch
from PIL import Image

from ijepa.data.datasets import FlatImageFolder, ImageFolderDataset
from ijepa.data.sources import normalisation, open_images, require
from ijepa.data.transforms import make_eval_transform
from ijepa.errors import DataError, DatasetNotFoundError


def _tree(root, classes=("a", "b"), n=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (10, 10), (40 * i, 9, 9)).save(root / c / f"{i}.png")
    return root


def test_every_kind_opens_by_name_with_its_limit_and_split(tmp_path):
    fm = open_images("fashion_mnist", split="test", limit=100)
    assert fm.images.shape == (100, 28, 28) and fm.images.dtype == torch.uint8 and len(fm.classes) == 10
    tf = make_eval_transform(8, (0.5,) * 3, (0.5,) * 3)
    _tree(tmp_path / "set" / "train")
    _tree(tmp_path / "set" / "test", n=2)
    train = open_images("imagefolder", tmp_path / "set", transform=tf)  # root/train, found by the split
    test = open_images("imagefolder", tmp_path / "set", split="test", transform=tf)
    assert isinstance(train, ImageFolderDataset) and (len(train), len(test)) == (6, 4)
    flat = open_images("folder", tmp_path / "set", split=None, transform=tf, limit=5)  # the whole tree, first 5
    assert len(flat) == 5 and isinstance(flat.dataset, FlatImageFolder) and flat[0][0].shape == (3, 8, 8)


def test_a_wrong_path_or_kind_is_one_line_naming_it(tmp_path):
    for kind in ("folder", "imagefolder", "shards"):
        with pytest.raises(DatasetNotFoundError, match=f"{kind} dataset path '.*nowhere' does not exist"):
            require(kind, tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="Fashion-MNIST folder '.*nowhere' does not exist"):
        require("fashion_mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        open_images("mnist", tmp_path)


def test_default_statistics_are_the_datasets_own_or_the_input_spec_rule():
    assert normalisation("fashion_mnist", 3) == ((0.2860,) * 3, (0.3530,) * 3)
    assert normalisation("folder", 3)[0] == (0.485, 0.456, 0.406) and normalisation("folder", 1) == ((0.5,), (0.5,))
