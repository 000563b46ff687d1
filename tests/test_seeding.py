"""Random streams: every stream its own generator, and nothing reseeds the caller's global generators."""

import random

import torch
from conftest import cfg_with
from PIL import Image

import ijepa.train.inputs as inputs
import ijepa.train.loop as loop
from ijepa.data.datasets import FlatImageFolder
from ijepa.data.transforms import make_pretrain_transform
from ijepa.eval.run import random_like
from ijepa.models import build_encoder
from ijepa.seeding import STREAMS, generator_for
from ijepa.train.loop import train


def test_streams_are_tagged_apart():
    assert len(set(STREAMS.values())) == len(STREAMS)
    a = torch.rand(4, generator=generator_for("mask", 0, 0, 3))
    b = torch.rand(4, generator=generator_for("crop", 0, 0, 3, 1))  # the pair that used to coincide
    c = torch.rand(4, generator=generator_for("mask", 0, 0, 3))
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_masks_and_crops_of_a_run_never_share_a_generator(tmp_path, monkeypatch):
    """Over a 3-epoch run (2 batches an epoch), record the seed of every generator the crop and mask
    streams are given: before the tags, the masks of step s and the crops of batch 1 of epoch s coincided."""
    seen = {"crop": [], "mask": []}

    def recorder(site, real):
        def wrapped(*args):
            g = real(*args)
            seen[site].append(g.initial_seed())
            return g
        return wrapped

    monkeypatch.setattr(inputs, "generator_for", recorder("crop", inputs.generator_for))
    monkeypatch.setattr(loop, "generator_for", recorder("mask", loop.generator_for))
    train(cfg_with("data.limit=32", "optimization.epochs=3"), tmp_path)
    assert len(seen["crop"]) == 6 and len(seen["mask"]) == 6
    assert not set(seen["crop"]) & set(seen["mask"])
    assert len(set(seen["crop"])) == len(set(seen["mask"])) == 6


def test_folder_transforms_leave_the_global_generators_alone(tmp_path):
    """With num_workers=0 the loader reads images in the training process: seeding each image's transform must
    not reset the stream drop-path and everything else draw from."""
    for i in range(3):
        Image.new("RGB", (20 + i, 20), (40 * i, 80, 120)).save(tmp_path / f"{i}.png")
    tf = make_pretrain_transform(crop_size=16, crop_scale=(0.3, 1.0), horizontal_flip=True)
    ds = inputs._SeededTransform(FlatImageFolder(tmp_path, tf), seed=7)

    torch.manual_seed(123)
    random.seed(123)
    ds[0]
    after = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(123)
    untouched = torch.rand(3), random.random()
    assert torch.equal(after[0], untouched[0]) and after[1] == untouched[1]
    assert torch.equal(ds[1][0], ds[1][0])  # each image's crop is still its own seeded draw


def test_random_baseline_leaves_the_global_generator_alone():
    enc = build_encoder("vit_tiny", img_size=16, patch_size=8, depth=1)
    torch.manual_seed(5)
    a = random_like(enc, seed=0)
    after = torch.rand(3)
    torch.manual_seed(5)
    untouched = torch.rand(3)
    assert torch.equal(after, untouched)
    b = random_like(enc, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
