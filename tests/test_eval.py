"""Tests for ijepa.eval: extraction, linear / k-NN / low-shot / attentive probes (CPU, seconds each)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ijepa.data.fashion_mnist import load_fashion_mnist
from ijepa.data.preprocess import prepare_images
from ijepa.eval import (
    AttentiveProbe,
    extract_features,
    fit_logistic,
    fmnist_probe,
    linear_probe,
    load_features,
    lowshot_eval,
    pixel_features,
    sample_per_class,
    save_features,
    train_attentive_probe,
)
from ijepa.metrics import knn_accuracy, knn_classify
from ijepa.models.vit import build_encoder


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    torch.manual_seed(0)
    # drop-path on: extraction must switch it off, or features would depend on chance and batch composition
    return build_encoder("vit_tiny", patch_size=4, img_size=28, in_chans=1, drop_path_rate=0.3)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------ extraction

def test_prepare_images_resizes_matches_channels_and_normalises():
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=g)
    spec = {"image_size": (32, 40), "in_chans": 3, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.5)}
    x = prepare_images(grey, spec)
    assert x.shape == (3, 3, 32, 40) and x.dtype == torch.float32
    # grey repeated to RGB: after undoing each channel's normalisation the channels are the same image
    raw = x * torch.tensor(spec["std"]).view(1, 3, 1, 1) + torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # bicubic overshoot clamped to the pixel range

    # same size: no resampling, uint8 and [0, 1] floats agree, normalisation is exact
    same = {"image_size": 28, "in_chans": 1, "mean": (0.25,), "std": (0.5,)}
    a = prepare_images(grey, same)
    b = prepare_images(grey.float() / 255, same)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[:, 0], (grey.float() / 255 - 0.25) / 0.5)

    # RGB (channels-first or channels-last) -> grey averages the channels
    rgb = torch.rand(2, 3, 28, 28, generator=g)
    out = prepare_images(rgb, same)
    torch.testing.assert_close(out[:, 0], (rgb.mean(1) - 0.25) / 0.5)
    torch.testing.assert_close(prepare_images(rgb.permute(0, 2, 3, 1).numpy(), same), out)


def test_extraction_is_batch_size_invariant_in_fp32(encoder, images):
    encoder.train()
    f1 = extract_features(encoder, images, batch_size=1, dtype="fp32", progress=False)
    f64 = extract_features(encoder, images, batch_size=64, dtype="fp32", progress=False)
    f7 = extract_features(encoder, images, batch_size=7, dtype="fp32", progress=False)  # ragged last batch
    assert f1.shape == (64, encoder.embed_dim) and f1.dtype == torch.float32 and f1.device.type == "cpu"
    torch.testing.assert_close(f1, f64, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(f7, f64, atol=1e-6, rtol=1e-5)
    assert encoder.training, "the encoder's train/eval mode must be restored"
    # the result is an ordinary tensor (not an inference tensor), so it can feed an autograd fit directly
    assert not f64.is_inference()


def test_pooling_shapes_and_consistency(encoder, images):
    kw = dict(batch_size=32, dtype="fp32", progress=False)
    n_tokens = (28 // 4) ** 2
    mean = extract_features(encoder, images[:10], pooling="mean", **kw)
    last4 = extract_features(encoder, images[:10], pooling="last4", **kw)
    tokens = extract_features(encoder, images[:10], pooling="tokens", **kw)
    d = encoder.embed_dim
    assert mean.shape == (10, d) and last4.shape == (10, 4 * d) and tokens.shape == (10, n_tokens, d)
    torch.testing.assert_close(tokens.mean(1), mean, atol=1e-5, rtol=1e-5)
    # the last of the four is the last layer; the others are earlier layers
    torch.testing.assert_close(last4[:, 3 * d:], mean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(last4[:, :d], mean)


def test_bf16_autocast_path_is_close_to_fp32(encoder, images):
    f32 = extract_features(encoder, images[:8], dtype="fp32", progress=False)
    bf = extract_features(encoder, images[:8], dtype="bf16", progress=False)
    assert bf.dtype == torch.float32
    assert (bf - f32).abs().max() < 0.1 * f32.abs().mean()


class _ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_input_drops_corrupt_items_and_keeps_labels(encoder, images):
    from PIL import Image

    items = []
    for i in range(10):
        img = images[i].numpy()
        if i == 3:
            items.append(None)  # what a dataset may yield for an unreadable file
        elif i == 6:
            items.append((None, 6))
        else:
            items.append((Image.fromarray(img) if i % 2 else torch.from_numpy(img), i))
    feats, labels = extract_features(encoder, _ListDataset(items), batch_size=4, dtype="fp32", progress=False,
                                     return_labels=True)
    keep = [i for i in range(10) if i not in (3, 6)]
    assert labels.tolist() == keep
    ref = extract_features(encoder, images[keep], dtype="fp32", progress=False)
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)

    # a DataLoader's batches are taken as they come (raw uint8 here, so still prepared for the encoder)
    loader = DataLoader(TensorDataset(images[:10], torch.arange(10)), batch_size=3)
    feats, labels = extract_features(encoder, loader, dtype="fp32", progress=False, return_labels=True)
    assert labels.tolist() == list(range(10))
    torch.testing.assert_close(feats, extract_features(encoder, images[:10], dtype="fp32", progress=False),
                               atol=1e-5, rtol=1e-5)


class _BareEncoder(nn.Module):
    """The least an encoder needs: forward(images) -> (B, N, D); no input_spec."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, kernel_size=8, stride=8)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def test_any_encoder_without_input_spec_gets_defaults():
    enc = _BareEncoder()
    imgs = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    f = extract_features(enc, imgs, progress=False)  # default spec: 224 px RGB, ImageNet statistics
    assert f.shape == (3, 8)
    t = extract_features(enc, imgs, pooling="tokens", progress=False)
    assert t.shape == (3, (224 // 8) ** 2, 8)
    with pytest.raises(TypeError, match="get_intermediate_layers"):
        extract_features(enc, imgs, pooling="last4", progress=False)


@pytest.mark.parametrize("ext", [".npy", ".safetensors"])
def test_save_and_load_features(tmp_path, ext):
    feats, labels = torch.randn(5, 3), torch.arange(5)
    path = save_features(tmp_path / f"feats{ext}", feats, labels)
    if ext == ".npy":
        assert (tmp_path / "feats_labels.npy").is_file()
    back = load_features(path)  # a FeatureSet: features, labels, rows, classes, skipped, meta
    assert torch.equal(back.features, feats) and torch.equal(back.labels, labels) and back.rows == list(range(5))
    with pytest.raises(ValueError):
        save_features(tmp_path / "feats.txt", feats)


# ---------------------------------------------------------------------------------------- linear probe

def test_linear_probe_separable_synthetic_reaches_100():
    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(4, 16, generator=g)
    y = torch.randint(0, 4, (800,), generator=g)
    X = centres[y] + torch.randn(800, 16, generator=g)
    yt = torch.randint(0, 4, (400,), generator=g)
    Xt = centres[yt] + torch.randn(400, 16, generator=g)
    res = linear_probe(X[:, :] + 100.0, y, Xt + 100.0, yt)  # an offset the standardisation must remove
    assert res["accuracy"] >= 0.995
    assert set(res["val_acc"]) == {1e-5, 1e-4, 1e-3, 1e-2, 1e-1} and res["best_wd"] in res["val_acc"]


def test_fit_logistic_weight_decay_shrinks_weights_and_runs_under_inference_mode():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 8, generator=g)
    y = (X[:, 0] > 0).long()
    with torch.inference_mode():  # callers extract features in inference mode; the fit must still work
        weak = fit_logistic(X, y, 1e-4)
        strong = fit_logistic(X, y, 1.0)
    assert strong.linear.weight.norm() < 0.5 * weak.linear.weight.norm()
    assert (weak.predict(X) == y).float().mean() > 0.97


def test_linear_probe_fashion_mnist_pixels_subset():
    x_tr, y_tr = load_fashion_mnist(train=True)  # a missing dataset fails here with the loader's message
    x_te, y_te = load_fashion_mnist(train=False)
    res = linear_probe(pixel_features(x_tr[:2000]), y_tr[:2000], pixel_features(x_te[:1000]), y_te[:1000])
    print(f"\nFashion-MNIST pixels 2k/1k: {res['accuracy']:.3f} "
          f"(wd {res['best_wd']:g}, {res['seconds']:.1f}s)")
    assert res["accuracy"] > 0.75


def test_fmnist_probe_random_encoder_baseline():
    torch.manual_seed(0)
    # one block keeps the 10,000 test images quick; the path is the same as `--baseline random`
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, in_chans=1, depth=1)
    res = fmnist_probe(enc, n_train=1000, progress=False, wds=(1e-3, 1e-1))
    assert res["protocol"] == "fmnist-probe" and res["n_train"] == 1000 and res["n_test"] == 10_000
    assert res["features"] == (enc.embed_dim,)
    assert res["accuracy"] > 0.5  # random patch features are far above chance (10%) on Fashion-MNIST


def test_linear_probe_timing_60k_x_384():
    g = torch.Generator().manual_seed(0)
    centres = 0.15 * torch.randn(10, 384, generator=g)
    y = torch.randint(0, 10, (60_000,), generator=g)
    X = torch.randn(60_000, 384, generator=g) + centres[y]
    yt = torch.randint(0, 10, (10_000,), generator=g)
    Xt = torch.randn(10_000, 384, generator=g) + centres[yt]
    t0 = time.perf_counter()
    res = linear_probe(X, y, Xt, yt)
    dt = time.perf_counter() - t0
    print(f"\nlinear probe 60,000 x 384, 10 classes, 5-value wd sweep + refit: {dt:.1f}s "
          f"(acc {res['accuracy']:.3f}, wd {res['best_wd']:g}, {torch.get_num_threads()} threads)")
    assert res["accuracy"] > 0.5


# ------------------------------------------------------------------------------------------------ k-NN

def test_knn_k1_on_its_own_training_set_is_perfect():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 32, generator=g)
    y = torch.randint(0, 7, (500,), generator=g)
    assert knn_accuracy(X, y, X, y, k=1, batch_size=64) == 1.0


def test_knn_temperature_weighting_picks_the_close_neighbour():
    # one very similar class-0 neighbour against two moderately similar class-1 neighbours
    a = torch.tensor([[1.0, 0.0, 0.0]])
    near = torch.tensor([[0.99, 0.141, 0.0]])
    mid = torch.tensor([[0.5, 0.866, 0.0], [0.5, 0.0, 0.866]])
    far = torch.tensor([[-1.0, 0.0, 0.0]])
    train_X = torch.cat([near, mid, far])
    train_y = torch.tensor([0, 1, 1, 2])
    sharp = knn_classify(train_X, train_y, a, k=3, T=0.07)
    flat = knn_classify(train_X, train_y, a, k=3, T=100.0)  # ~ unweighted majority vote
    assert sharp.tolist() == [0] and flat.tolist() == [1]
    # cosine, not Euclidean: scaling a feature vector does not change its neighbours
    scaled = train_X * torch.tensor([[10.0], [1.0], [1.0], [1.0]])
    assert knn_classify(scaled, train_y, a, k=1).tolist() == [0]


def test_knn_batching_does_not_change_predictions():
    g = torch.Generator().manual_seed(0)
    X, Q = torch.randn(300, 16, generator=g), torch.randn(100, 16, generator=g)
    y = torch.randint(0, 5, (300,), generator=g)
    assert torch.equal(knn_classify(X, y, Q, batch_size=7), knn_classify(X, y, Q, batch_size=1000))


# -------------------------------------------------------------------------------------------- low-shot

def test_sample_per_class_exact_counts_and_seeding():
    y = torch.cat([torch.full((n,), c) for c, n in enumerate([600, 300, 1000, 50])])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    idx = sample_per_class(y, 5, seed=0)
    assert torch.bincount(y[idx]).tolist() == [5, 5, 5, 5]
    assert len(set(idx.tolist())) == len(idx)  # without replacement
    assert torch.equal(idx, sample_per_class(y, 5, seed=0))
    assert not torch.equal(idx, sample_per_class(y, 5, seed=1))
    frac = sample_per_class(y, 0.01, seed=0)
    assert torch.bincount(y[frac]).tolist() == [6, 3, 10, 1]  # 1% of each class, at least one
    assert torch.equal(frac, sample_per_class(y, "1%", seed=0))
    with pytest.raises(ValueError):
        sample_per_class(y, 51, seed=0)  # the smallest class cannot give 51


def test_lowshot_eval_reports_mean_and_std_per_shot():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(3, 8, generator=g)
    y = torch.randint(0, 3, (600,), generator=g)
    X = centres[y] + torch.randn(600, 8, generator=g)
    yt = torch.randint(0, 3, (300,), generator=g)
    Xt = centres[yt] + torch.randn(300, 8, generator=g)
    for method in ("linear", "knn"):
        res = lowshot_eval(X, y, Xt, yt, shots=(1, 5, "2%"), seeds=(0, 1), method=method)
        assert list(res) == [1, 5, "2%"]
        for mean, std in res.values():
            assert 0.6 < mean <= 1.0 and std >= 0.0


# ------------------------------------------------------------------------------------------- attentive

def _which_token_toy(n: int, seed: int, T: int = 8, D: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token carries a fixed identity code (like a position embedding); the class is WHICH token also
    carries a flag. Every example holds the same set of tokens, so the mean over tokens has no class
    information: only attending to the flagged token solves it."""
    codes = torch.randn(T, D, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, T, (n,), generator=g)
    x = (codes.expand(n, T, D) + 0.1 * torch.randn(n, T, D, generator=g)).clone()
    x[torch.arange(n), y, 0] += 8.0
    return x, y


def test_attentive_probe_solves_which_token_task_that_mean_pooling_cannot():
    xtr, ytr = _which_token_toy(2000, seed=0)
    xte, yte = _which_token_toy(500, seed=1)
    mean_acc = linear_probe(xtr.mean(1), ytr, xte.mean(1), yte, wds=1e-3)["accuracy"]
    res = train_attentive_probe(xtr, ytr, xte, yte, epochs=20, lr=3e-3, batch_size=64, seed=0)
    print(f"\nwhich-token toy: attentive {res['accuracy']:.3f}, mean-pool linear {mean_acc:.3f}")
    assert mean_acc < 0.3  # ~ chance (1/8)
    assert res["accuracy"] > 0.9
    assert isinstance(res["model"], AttentiveProbe)


def test_attentive_probe_accepts_a_token_callable():
    xtr, ytr = _which_token_toy(300, seed=0)
    xte, yte = _which_token_toy(100, seed=1)
    kw = dict(epochs=2, batch_size=32, seed=0)
    from_tensor = train_attentive_probe(xtr, ytr, xte, yte, **kw)
    from_fn = train_attentive_probe(lambda idx: xtr[idx], ytr, lambda idx: xte[idx], yte, **kw)
    assert from_fn["accuracy"] == from_tensor["accuracy"]
    assert from_fn["final_loss"] == pytest.approx(from_tensor["final_loss"], rel=1e-5)


def test_attentive_probe_shapes_multi_query_and_depth():
    probe = AttentiveProbe(dim=48, num_classes=5, num_queries=3, depth=2)
    assert probe(torch.randn(4, 10, 48)).shape == (4, 5)
    assert probe.query_tokens.shape == (1, 3, 48)
    xtr, ytr = _which_token_toy(64, seed=0)
    with torch.inference_mode():  # e.g. right after extracting tokens; training must still get gradients
        res = train_attentive_probe(xtr, ytr, xtr, ytr, epochs=1, batch_size=32, depth=2, num_queries=2)
    assert 0.0 <= res["accuracy"] <= 1.0 and not res["model"].query_tokens.is_inference()


def test_numpy_inputs_are_accepted():
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    assert linear_probe(X, y, X, y, wds=1e-3)["accuracy"] > 0.9
    assert knn_accuracy(torch.from_numpy(X), y, torch.from_numpy(X), y, k=1) == 1.0
