"""Tests of the stochastic decoder (ijepa.viz.stochastic) and the sample figures of ``viz predict``
(ijepa.viz.samples): tiny models on Fashion-MNIST, single-threaded."""

from __future__ import annotations

import pytest
import torch

from ijepa.data.fashion_mnist import load_fashion_mnist
from ijepa.masks import MaskConfig, MultiBlockMaskSampler
from ijepa.models import build_encoder, build_predictor
from ijepa.viz import VizError
from ijepa.viz.decoder import save_decoder, train_decoder
from ijepa.viz.predict import WorldModel, sample_boxes
from ijepa.viz.samples import measure_samples, paste_box, render_samples, train_classifier
from ijepa.viz.stochastic import (
    GridDenoiser,
    box_masks,
    check_fits,
    corrupt_box_tokens,
    draw_samples,
    load_stochastic_decoder,
    sample,
    save_stochastic_decoder,
    train_stochastic_decoder,
)

FMNIST_SPEC = {"image_size": (28, 28), "in_chans": 1, "mean": (0.286,), "std": (0.353,)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _encoder(seed: int = 0, dim: int = 32):
    torch.manual_seed(seed)
    return build_encoder("vit_tiny", patch_size=4, img_size=28, in_chans=1, embed_dim=dim, depth=1, num_heads=2,
                         input_spec=FMNIST_SPEC).eval()


def _fmnist(n: int, train: bool = True, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fashion_mnist(train=train)
    return x[start:start + n, None].float() / 255.0, torch.as_tensor(y[start:start + n]).long()


def _world_model(steps: int) -> WorldModel:
    """A tiny I-JEPA trained briefly with the real loss, its target encoder frozen at init (a stable target)."""
    from ijepa.train.ijepa import IJEPA

    target, encoder = _encoder(), _encoder()
    torch.manual_seed(1)
    predictor = build_predictor(encoder, predictor_embed_dim=32, depth=1, num_heads=2)
    model = IJEPA(encoder, predictor, target)
    sampler = MultiBlockMaskSampler(7, MaskConfig(min_keep=4))
    x = (_fmnist(2048)[0] - 0.286) / 0.353
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(predictor.parameters()), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    encoder.train()
    predictor.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (32,), generator=g)
        masks_enc, masks_pred = sampler(32, g)
        loss = model(x[idx], masks_enc, masks_pred)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return WorldModel(encoder.eval(), predictor.eval(), target.eval(), "tiny")


@pytest.fixture(scope="module")
def tiny_sampler():
    """A stochastic decoder trained briefly on the (random-init) tiny target encoder's features."""
    torch.set_num_threads(1)
    enc = _encoder()
    model, stats = train_stochastic_decoder(enc, _fmnist(1024)[0], val_images=_fmnist(64, train=False)[0],
                                            steps=150, batch_size=64, hidden=64, depth=1, pixel_channels=8)
    return enc, model, stats


def test_corruption_pools_and_shrinks_only_the_box():
    tokens = torch.randn(2, 9, 4)
    mean = torch.randn(9, 4)
    masks = box_masks([(0, 0, 2, 2), (1, 1, 1, 2)], (3, 3))
    assert masks.sum(1).tolist() == [4, 2]
    same = corrupt_box_tokens(tokens, masks, mean, torch.zeros(2), torch.ones(2))
    assert torch.equal(same, tokens)
    pooled = corrupt_box_tokens(tokens, masks, mean, torch.ones(2), torch.ones(2))
    assert torch.equal(pooled[~masks], tokens[~masks])
    dev = pooled[0, masks[0]] - mean[masks[0]]  # every box token: the box's mean deviation
    assert torch.allclose(dev, dev[:1].expand_as(dev), atol=1e-6)
    assert torch.allclose(dev[0], (tokens[0, masks[0]] - mean[masks[0]]).mean(0), atol=1e-6)
    gone = corrupt_box_tokens(tokens, masks, mean, torch.rand(2), torch.zeros(2))
    assert torch.allclose(gone[masks], mean.expand(2, 9, 4)[masks])


@pytest.mark.parametrize("process", ["flow", "ddpm"])
def test_samples_differ_across_seeds_and_repeat_for_one(process):
    torch.manual_seed(0)
    model = GridDenoiser(32, (7, 7), 4, 1, hidden=16, depth=1, pixel_channels=4, process=process).eval()
    cond = torch.randn(3, 49, 32)
    a = sample(model, cond, seed=0, steps=6)
    assert a.shape == (3, 1, 28, 28) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, sample(model, cond, seed=0, steps=6))
    assert torch.allclose(a, sample(model, cond, seed=0, steps=6, batch_size=2), atol=1e-5)  # batching changes nothing
    b = sample(model, cond, seed=1, steps=6)
    assert not torch.equal(a, b)  # (a random-init net barely depends on its input: the trained test below)
    k = draw_samples(model, cond, 3, seed=0, steps=6)
    assert k.shape == (3, 3, 1, 28, 28) and torch.equal(k[:, 0], a) and torch.equal(k[:, 1], b)


def test_trained_sampler_is_faithful_to_true_tokens(tiny_sampler):
    # Random-init tiny tokens still hold each patch's pixels: one sample drawn from a held-out image's true
    # tokens must be far closer to it than the training set's mean image is.
    _, _, stats = tiny_sampler
    assert stats.steps == 150
    assert stats.sample_psnr > stats.mean_image_psnr + 3.0, stats


def test_file_round_trips_and_refuses_another_encoder(tiny_sampler, tmp_path):
    enc, model, stats = tiny_sampler
    path = save_stochastic_decoder(model, tmp_path / "s.safetensors", encoder=enc, source="tiny run", stats=stats)
    again, info = load_stochastic_decoder(path)
    assert again.arch == model.arch and info["source"] == "tiny run"
    assert info["stats"]["sample_psnr"] == pytest.approx(stats.sample_psnr)
    assert info["input_spec"]["image_size"] == [28, 28]
    assert torch.equal(again.token_mean, model.token_mean)
    cond = torch.randn(2, 49, 32)
    assert torch.equal(sample(again, cond, seed=3, steps=4), sample(model, cond, seed=3, steps=4))
    check_fits(again, info, enc)  # its own encoder passes
    with pytest.raises(VizError, match="features of tiny run.*fingerprint"):
        check_fits(again, info, _encoder(seed=5))  # same shapes, other weights
    with pytest.raises(VizError, match=r"token width 32 \(this encoder: 48\)"):
        check_fits(again, info, _encoder(dim=48))
    pixel, _ = train_decoder(enc, _fmnist(32)[0], steps=1, hidden=8, depth=1)
    other = save_decoder(pixel, tmp_path / "pixel.safetensors")
    with pytest.raises(VizError, match="not a stochastic decoder"):
        load_stochastic_decoder(other)


def test_render_samples_rows(tiny_sampler):
    enc, model, _ = tiny_sampler
    wm = _world_model(steps=0)
    images = _fmnist(3, train=False)[0]
    boxes = [(1, 1, 3, 3)] * 3
    rows = render_samples(wm, images, boxes, model, k=2, steps=4, seed=7)
    assert rows.samples.shape == (3, 2, 1, 28, 28) and rows.decoded is None
    assert torch.equal(rows.context[..., 4:16, 4:16], torch.full((3, 1, 12, 12), 0.5))
    again = render_samples(wm, images, boxes, model, k=2, steps=4, seed=7)
    assert torch.equal(rows.samples, again.samples)


def test_paste_box():
    base, fill = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    out = paste_box(base, fill, [(0, 0, 1, 1), (1, 1, 1, 1)], 4)
    assert out[0, 0, :4, :4].eq(1).all() and out[0].sum() == 16
    assert out[1, 0, 4:, 4:].eq(1).all() and out[1].sum() == 16


@pytest.mark.slow
def test_swap_test_on_a_small_trained_model():
    # Rendering image j's prediction in image i's box must move the classifier's label toward j's class: the
    # box's tokens, not the context around them, decide what the decoder draws there.
    wm = _world_model(steps=300)
    train_x, train_y = _fmnist(3000)
    model, _ = train_stochastic_decoder(wm.target_encoder, train_x[:2000], steps=150, batch_size=64, hidden=48,
                                        depth=2, pixel_channels=8)
    clf = train_classifier(train_x, train_y, steps=150, batch_size=64)
    images, labels = _fmnist(160, train=False, start=2000)
    boxes = sample_boxes((7, 7), len(images), seed=3, mask_cfg=MaskConfig(pred_mask_scale=(0.3, 0.4)))
    m = measure_samples(wm, images, boxes, model, k=3, labels=labels, classifier=clf, steps=8)
    s = m["semantic"]
    assert s["partner_prob_swap"] > 1.3 * s["partner_prob_completion"], m
    assert s["labelled_partner_swap"] > s["labelled_partner_completion"], m
    assert s["acc_completion"] > s["acc_swap"] + 0.1, m
    assert s["acc_completion"] > s["acc_mean_fill"] + 0.1, m
    f = m["faithful"]
    assert f["true_one_sample_psnr"] > f["mean_image_psnr"] + 3.0, m
    st = m["stochastic"]
    assert st["pred_std_in_box"] > st["pred_std_outside"], m


def _ijepa(argv: list[str]) -> int:
    from ijepa.cli import main

    return main(argv)


def test_train_decoder_and_viz_predict_with_samples(tmp_path, capsys):
    from ijepa.interop import export

    enc = _encoder(dim=48)
    torch.manual_seed(1)
    model = tmp_path / "tiny.safetensors"
    export(enc, model, "ijepa", predictor=build_predictor(enc, predictor_embed_dim=24, depth=1, num_heads=2))
    sdec = tmp_path / "s.safetensors"
    assert _ijepa(["train-decoder", str(model), "--kind", "stochastic", "--out", str(sdec), "--steps", "3",
                   "--train-images", "64", "--val-images", "16", "--hidden", "16", "--depth", "1",
                   "--pixel-channels", "4"]) == 0
    assert "one sample from the true tokens" in capsys.readouterr().out
    again, info = load_stochastic_decoder(sdec)
    assert again.arch.embed_dim == 48 and again.arch.depth == 1 and info["stats"]["steps"] == 3
    out = tmp_path / "samples.png"
    assert _ijepa(["viz", "predict", str(model), "--out", str(out), "--stochastic-decoder", str(sdec),
                   "--samples", "3", "--sample-steps", "3", "--n", "2", "--gallery", "20", "--measure", "8",
                   "--judge-images", "64", "--judge-steps", "5", "--box", "1,1,3,2"]) == 0
    text = capsys.readouterr().out
    for needle in ("faithful: one sample", "stochastic: std across samples", "semantic (swap)", "diversity:"):
        assert needle in text, text
    assert out.is_file() and out.stat().st_size > 1000
    other = tmp_path / "other.safetensors"  # another encoder of the same shape: refused, naming the mismatch
    export(_encoder(seed=9, dim=48), other, "ijepa",
           predictor=build_predictor(_encoder(seed=9, dim=48), predictor_embed_dim=24, depth=1, num_heads=2))
    assert _ijepa(["viz", "predict", str(other), "--out", str(out), "--stochastic-decoder", str(sdec), "--n", "1",
                   "--gallery", "8", "--measure", "0"]) == 1
    assert "trained on the features of" in capsys.readouterr().err
