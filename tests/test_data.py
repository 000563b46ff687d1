"""Tests for ijepa.data: datasets, corrupt-file handling, transforms, samplers and in-memory batches."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from ijepa.data.datasets import (
    CorruptImageWarning,
    FlatImageFolder,
    ImageFolderDataset,
    TensorImageDataset,
    collate_skip_corrupt,
)
from ijepa.data.fashion_mnist import load_fashion_mnist
from ijepa.data.loader import InMemoryBatches, ResumableDistributedSampler, build_loader
from ijepa.data.transforms import BatchRandomResizedCrop, make_eval_transform, make_pretrain_transform, normalize_batch
from ijepa.errors import DatasetNotFoundError
from ijepa.spec import IMAGENET_MEAN, IMAGENET_STD


def _png(path: Path, value: int, size: tuple[int, int] = (10, 8), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value // 2, 255 - value)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    # Created out of order, with mixed-case extensions, a nested file and a non-image, to check
    # sorting, extension matching and recursion within a class.
    _png(root / "zebra" / "b.png", 10)
    _png(root / "zebra" / "a.PNG", 20)
    _png(root / "apple" / "sub" / "c.png", 30)
    _png(root / "apple" / "x.png", 40)
    Image.new("RGB", (10, 8), (1, 2, 3)).save(root / "apple" / "y.JPEG", format="JPEG")
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "mango").mkdir()  # empty class: keeps its index
    return root


def test_image_folder_labels_and_order(class_tree: Path) -> None:
    ds = ImageFolderDataset(class_tree)
    assert ds.classes == ["apple", "mango", "zebra"]
    rel = [(os.path.relpath(p, class_tree), y) for p, y in ds.samples]
    assert rel == [
        (os.path.join("apple", "sub", "c.png"), 0),
        (os.path.join("apple", "x.png"), 0),
        (os.path.join("apple", "y.JPEG"), 0),
        (os.path.join("zebra", "a.PNG"), 2),
        (os.path.join("zebra", "b.png"), 2),
    ]
    assert ds.targets == [0, 0, 0, 2, 2]
    img, label = ds[3]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (10, 8)
    assert label == 2 and img.getpixel((0, 0)) == (20, 10, 235)
    # Listing is deterministic: a second construction gives the same samples.
    assert ImageFolderDataset(class_tree).samples == ds.samples


def test_flat_image_folder_recursive(class_tree: Path) -> None:
    ds = FlatImageFolder(class_tree, transform=make_eval_transform(8, (0.5,) * 3, (0.5,) * 3))
    assert len(ds) == 5
    assert [y for _, y in ds.samples] == [-1] * 5
    assert any(os.sep + "sub" + os.sep in p for p, _ in ds.samples)
    img, label = ds[0]
    assert img.shape == (3, 8, 8) and label == -1


def test_missing_and_empty_folders_raise_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for cls in (ImageFolderDataset, FlatImageFolder):
        with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
            cls(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No images found under .*empty"):
        FlatImageFolder(empty)
    with pytest.raises(FileNotFoundError, match="No class sub-folders"):
        ImageFolderDataset(empty)
    _png(empty / "loose.png", 1)
    with pytest.raises(FileNotFoundError, match="FlatImageFolder"):
        ImageFolderDataset(empty)
    (empty / "cls").mkdir()
    (empty / "cls" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="No images in the class sub-folders"):
        ImageFolderDataset(empty)


@pytest.fixture
def tree_with_corrupt(tmp_path: Path) -> Path:
    root = tmp_path / "c" / "only"
    _png(root / "a.png", 50)
    rng = np.random.default_rng(0)
    (root / "b_random.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    _png(root / "c.png", 100)
    good = _png(root / "d_full.png", 150, size=(64, 64))
    data = good.read_bytes()
    (root / "d_trunc.png").write_bytes(data[: len(data) // 2])
    good.unlink()
    return root.parent


def test_corrupt_and_truncated_files_are_skipped_and_counted(tree_with_corrupt: Path) -> None:
    ds = ImageFolderDataset(tree_with_corrupt, transform=make_eval_transform(8, (0.5,) * 3, (0.5,) * 3))
    names = [os.path.basename(p) for p, _ in ds.samples]
    assert names == ["a.png", "b_random.jpg", "c.png", "d_trunc.png"]

    with pytest.warns(CorruptImageWarning, match="b_random.jpg"):
        assert ds[1] is None
    with pytest.warns(CorruptImageWarning, match="d_trunc.png"):
        assert ds[3] is None

    images, labels, skipped = collate_skip_corrupt([ds[0], ds[1], ds[2], ds[2]])
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 0, 0] and skipped == [None]
    assert collate_skip_corrupt([ds[1], ds[3]]) == (None, None, [None, None])
    named = collate_skip_corrupt([ds.read(0), ds.read(1), ds.read(3)])[2]  # read(): Unreadable, naming the file
    assert [u.source for u in named] == ["only/b_random.jpg", "only/d_trunc.png"] and all(u.reason for u in named)

    # Through the DataLoader path: one epoch over all four files, two of them bad.
    loader, sampler = build_loader(ds, batch_size=4, shuffle=False)
    batches = list(loader)
    assert len(batches) == 1
    images, labels, skipped = batches[0]
    assert images.shape == (2, 3, 8, 8) and len(skipped) == 2


def test_corrupt_warning_is_emitted_once_per_file(tree_with_corrupt: Path) -> None:
    ds = FlatImageFolder(tree_with_corrupt)
    with pytest.warns(CorruptImageWarning) as record:
        for _ in range(3):
            ds[1]
    assert len([w for w in record if issubclass(w.category, CorruptImageWarning)]) == 1


def test_pretrain_transform_shape_dtype_normalisation() -> None:
    img = Image.new("RGB", (40, 30), (255, 0, 128))
    t = make_pretrain_transform(crop_size=16)
    x = t(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    # A constant image stays constant through crop/resize, so each channel is (v/255 - mean) / std.
    expected = (torch.tensor([255, 0, 128]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 5, 7], expected, atol=1e-5, rtol=0)


def test_pretrain_transform_grayscale_and_tensor_input() -> None:
    t = make_pretrain_transform(crop_size=12, mean=(0.5,), std=(0.5,), in_chans=1, horizontal_flip=True,
                                color_distortion=True, color_jitter_strength=0.5, gaussian_blur=True)
    rgb = Image.new("RGB", (20, 20), (200, 200, 200))
    x = t(rgb)
    assert x.shape == (1, 12, 12)
    # uint8 tensors (what TensorImageDataset yields) are accepted too.
    y = t(torch.full((1, 28, 28), 255, dtype=torch.uint8))
    assert y.shape == (1, 12, 12)
    # ... and scaled like PIL images: white -> 1 after Normalize(0.5, 0.5). Checked without the colour distortion,
    # whose random brightness would move the value (this assertion was flaky with it).
    plain = make_pretrain_transform(crop_size=12, mean=(0.5,), std=(0.5,), in_chans=1)
    torch.testing.assert_close(plain(torch.full((1, 28, 28), 255, dtype=torch.uint8)).amax(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="mean/std"):
        make_pretrain_transform(in_chans=1)


def test_eval_transform_resize_and_center_crop() -> None:
    # Left half black, right half white: after short-side resize and centre crop the left and right
    # columns of the crop keep that split, so the crop is centred.
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, 20:] = 255
    t = make_eval_transform(10, mean=(0.0,), std=(1.0,), in_chans=1, crop_pct=1.0)
    x = t(Image.fromarray(arr))
    assert x.shape == (1, 10, 10)
    assert x[0, :, 0].max() < 0.05 and x[0, :, -1].min() > 0.95
    t3 = make_eval_transform(8, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.5)
    assert t3(Image.fromarray(arr).convert("RGB")).shape == (3, 8, 8)


def test_normalize_batch() -> None:
    x = torch.rand(2, 3, 4, 4)
    y = normalize_batch(x, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(y[:, 1], (x[:, 1] - 0.456) / 0.224)
    with pytest.raises(TypeError):
        normalize_batch(x.to(torch.uint8), (0.5,), (0.5,))


def _batch(b: int = 4, c: int = 3, h: int = 24, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def test_batch_rrc_shape_dtype_and_determinism() -> None:
    images = _batch()
    crop = BatchRandomResizedCrop(16, horizontal_flip=True)
    a = crop(images, torch.Generator().manual_seed(1))
    b = crop(images, torch.Generator().manual_seed(1))
    c = crop(images, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 16, 16) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    # uint8 input is the float input divided by 255.
    torch.testing.assert_close(crop(images.float() / 255, torch.Generator().manual_seed(1)), a)


def test_batch_rrc_boxes_respect_scale_ratio_and_bounds() -> None:
    h, w = 24, 48
    crop = BatchRandomResizedCrop(8, scale=(0.2, 0.5), ratio=(0.5, 2.0))
    boxes, flip = crop.sample_boxes(2000, h, w, torch.Generator().manual_seed(0))
    x0, y0, bw, bh = boxes.unbind(1)
    area = bw * bh / (h * w)
    assert (area > 0.2 - 1e-9).all() and (area < 0.5 + 1e-9).all()
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + bw <= w + 1e-9).all() and (y0 + bh <= h + 1e-9).all()
    # Ratios are clamped only where the box would not fit; here h=24 limits tall boxes only.
    r = bw / bh
    assert (r >= 0.5 - 1e-9).all() and (r <= 2.0 + 1e-9).all()
    assert not flip.any()
    # Different images in one batch get different boxes.
    assert boxes[:, 2].unique().numel() > 1000


def test_batch_rrc_full_scale_is_plain_resize() -> None:
    images = _batch(h=20, w=30)
    crop = BatchRandomResizedCrop(12, scale=(1.0, 1.0))
    out = crop(images, torch.Generator().manual_seed(0))
    ref = F.interpolate(images.float() / 255, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_batch_rrc_flip_flips() -> None:
    images = _batch(b=64)
    plain = BatchRandomResizedCrop(16, horizontal_flip=False)
    flipping = BatchRandomResizedCrop(16, horizontal_flip=True)
    a = plain(images, torch.Generator().manual_seed(3))
    b = flipping(images, torch.Generator().manual_seed(3))
    _, flip = flipping.sample_boxes(64, 24, 32, torch.Generator().manual_seed(3))
    assert 0 < flip.sum() < 64
    # Same boxes whatever the flip setting; flipped samples are mirror images.
    torch.testing.assert_close(b[flip], a[flip].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(b[~flip], a[~flip])


def test_sampler_matches_distributed_sampler_and_ranks_partition() -> None:
    n, world = 103, 4
    for epoch in (0, 5):
        per_rank = []
        for rank in range(world):
            s = ResumableDistributedSampler(n, num_replicas=world, rank=rank, seed=7)
            s.set_epoch(epoch)
            ref = DistributedSampler(range(n), num_replicas=world, rank=rank, seed=7, drop_last=True)
            ref.set_epoch(epoch)
            assert list(s) == list(ref)
            assert len(s) == n // world
            per_rank.append(list(s))
        flat = [i for r in per_rank for i in r]
        assert len(flat) == len(set(flat)) == (n // world) * world
        # Together the ranks cover the epoch's permutation, trimmed to a multiple of world.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert sorted(flat) == sorted(perm[: (n // world) * world])
    s0 = ResumableDistributedSampler(n, seed=7)
    e0 = list(s0)
    s0.set_epoch(1)
    assert list(s0) != e0 and sorted(list(s0)) == sorted(e0) == list(range(n))


def test_sampler_padding_without_drop_last_and_no_shuffle() -> None:
    s = ResumableDistributedSampler(10, num_replicas=4, rank=3, shuffle=False, drop_last=False)
    assert len(s) == 3 and list(s) == [3, 7, 1]


def test_sampler_set_start_resumes_exactly() -> None:
    bs, k = 8, 3
    s = ResumableDistributedSampler(100, num_replicas=2, rank=1, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_start(k, bs)
    assert len(s) == len(full) - k * bs
    assert list(s) == full[k * bs:]
    s.set_epoch(3)  # a new epoch starts from its beginning
    assert len(s) == 50
    s.set_epoch(2)
    s.set_start(100, bs)
    assert len(s) == 0 and list(s) == []


def test_build_loader_resume_gives_the_remaining_batches() -> None:
    images = torch.arange(45, dtype=torch.uint8).view(45, 1, 1, 1).expand(45, 1, 2, 2).contiguous()
    ds = TensorImageDataset(images, torch.arange(45))
    loader, sampler = build_loader(ds, batch_size=4, seed=11)
    sampler.set_epoch(1)
    full = [labels.tolist() for _, labels, _ in loader]
    assert len(full) == len(loader) == 11
    k = 4
    loader2, sampler2 = build_loader(ds, batch_size=4, seed=11)
    sampler2.set_epoch(1)
    sampler2.set_start(k, 4)
    assert len(loader2) == 11 - k
    rest = []
    for imgs, labels, skipped in loader2:
        assert imgs.dtype == torch.uint8 and skipped == []
        assert imgs[:, 0, 0, 0].long().tolist() == labels.tolist()
        rest.append(labels.tolist())
    assert rest == full[k:]


def test_in_memory_batches_follow_sampler_order_and_resume() -> None:
    n, bs = 50, 6
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 3, 3).contiguous()
    labels = torch.arange(n) * 10
    for rank in range(2):
        it = InMemoryBatches(images, labels, bs, rank=rank, world_size=2, seed=5)
        s = ResumableDistributedSampler(n, num_replicas=2, rank=rank, seed=5)
        it.set_epoch(4)
        s.set_epoch(4)
        order = list(s)
        batches = list(it)
        assert len(batches) == len(it) == it.batches_per_epoch == 25 // bs
        for j, (x, y) in enumerate(batches):
            assert x.shape == (bs, 1, 3, 3) and x.dtype == torch.uint8
            assert x[:, 0, 0, 0].long().tolist() == order[j * bs:(j + 1) * bs]
            assert y.tolist() == [10 * i for i in order[j * bs:(j + 1) * bs]]
        it.set_start(2)
        assert len(it) == len(batches) - 2 and it.batches_per_epoch == len(batches)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(list(it), batches[2:], strict=True))
    last = InMemoryBatches(images, None, bs, drop_last=False, shuffle=False)
    got = list(last)
    assert len(got) == math.ceil(n / bs) and got[-1][0].shape[0] == n % bs
    assert (got[0][1] == -1).all()


def test_fashion_mnist_tensor_dataset_slice() -> None:
    try:
        images, labels = load_fashion_mnist(train=False)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    ds = TensorImageDataset(images[:64], labels[:64])
    img, label = ds[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8 and label == int(labels[3])
    loader, _ = build_loader(ds, batch_size=16)
    x, y, skipped = next(iter(loader))
    assert x.shape == (16, 1, 28, 28) and y.dtype == torch.int64 and skipped == []
    crop = BatchRandomResizedCrop(32, horizontal_flip=True)
    out = crop(x, torch.Generator().manual_seed(0))
    assert out.shape == (16, 1, 32, 32)
    t = make_pretrain_transform(crop_size=24, mean=(0.286,), std=(0.353,), in_chans=1)
    assert TensorImageDataset(images[:4], labels[:4], transform=t)[0][0].shape == (1, 24, 24)
