"""Tests of the pictures (ijepa.viz): tiny random models, a few images, single-threaded, seconds each."""

from __future__ import annotations

import csv
import math

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")  # before anything touches pyplot; the viz code itself never does

from ijepa.cli import main  # noqa: E402
from ijepa.data.fashion_mnist import load_fashion_mnist  # noqa: E402
from ijepa.interop import export  # noqa: E402
from ijepa.masks import MaskConfig, MultiBlockMaskSampler  # noqa: E402
from ijepa.models import build_encoder, build_predictor  # noqa: E402
from ijepa.viz import VizError  # noqa: E402
from ijepa.viz.curves import plot_curves, read_run  # noqa: E402
from ijepa.viz.decoder import decode_images, load_decoder, psnr, save_decoder, train_decoder  # noqa: E402
from ijepa.viz.features import draw_features, encode, pca_feature_maps  # noqa: E402
from ijepa.viz.masks import draw_masks, drawn_patches, mask_batch, render_masks  # noqa: E402
from ijepa.viz.predict import (  # noqa: E402
    WorldModel,
    box_ids,
    box_specificity,
    context_ids,
    predict_box,
    sample_boxes,
)

FMNIST_SPEC = {"image_size": (28, 28), "in_chans": 1, "mean": (0.286,), "std": (0.353,)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _ijepa(argv: list[str]) -> int:
    """Run a viz command the way `ijepa` does."""
    return main(argv)


def _png(path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.load()
        return im.size


def _image_axes(fig) -> int:
    return sum(1 for ax in fig.axes if ax.images)


def _tiny_encoder(seed: int = 0, dim: int = 48, depth: int = 1):
    torch.manual_seed(seed)
    return build_encoder("vit_tiny", patch_size=4, img_size=28, in_chans=1, embed_dim=dim, depth=depth,
                         num_heads=2, input_spec=FMNIST_SPEC).eval()


def _fmnist(n: int, train: bool = True, start: int = 0) -> torch.Tensor:
    x, _ = load_fashion_mnist(train=train)
    return x[start:start + n, None].float() / 255.0


# ------------------------------------------------------------------------------------------------------ masks


def _assert_drawn_equals_sampled(images, masks_enc, masks_pred, grid, patch):
    for e in range(len(masks_enc)):
        rendered = render_masks(images, masks_enc, masks_pred, grid, patch, context=e)
        found = drawn_patches(rendered, images, grid, patch, len(masks_pred))
        for i, (ctx, tgts) in enumerate(found):
            assert ctx == set(masks_enc[e][i].tolist())
            assert [t for t in tgts] == [set(m[i].tolist()) for m in masks_pred]


def test_viz_masks_draws_exactly_the_sampled_patches():
    mb = mask_batch(None, ["mask.num_pred_masks=4"], n=4, seed=3)  # the CPU default: real crops and sampler
    assert mb.grid_size == (9, 9) and mb.images.shape == (4, 1, 36, 36)
    _assert_drawn_equals_sampled(mb.images, mb.masks_enc, mb.masks_pred, mb.grid_size, mb.patch_size)
    # and what is read back is not the sampler's answer whatever was drawn: a different mask reads differently
    other_enc, other_pred = MultiBlockMaskSampler(9, MaskConfig(min_keep=4))(4, torch.Generator().manual_seed(9))
    rendered = render_masks(mb.images, other_enc, other_pred, mb.grid_size, mb.patch_size)
    found = drawn_patches(rendered, mb.images, mb.grid_size, mb.patch_size, len(mb.masks_pred))
    assert any(ctx != set(mb.masks_enc[0][i].tolist()) for i, (ctx, _) in enumerate(found))


def test_masks_overlapping_blocks_colour_images_and_several_contexts():
    # Reference mode truncates masks (not rectangles), overlap puts targets inside the context, RGB images
    # under the tint: every patch must still read back as exactly its memberships.
    cfg = MaskConfig(mode="reference", num_enc_masks=2, num_pred_masks=3, min_keep=2, allow_overlap=True)
    masks_enc, masks_pred = MultiBlockMaskSampler((6, 5), cfg)(3, torch.Generator().manual_seed(0))
    images = torch.rand(3, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    _assert_drawn_equals_sampled(images, masks_enc, masks_pred, (6, 5), 4)
    shared = set(masks_enc[0][0].tolist()) & set(masks_pred[0][0].tolist())
    assert shared, "the case should exercise a patch in both the context and a target"
    fig = draw_masks(images, masks_enc, masks_pred, (6, 5), 4, ncols=3)
    assert _image_axes(fig) == 2 * 3 * 2  # (crop + overlay) per image per context mask


def test_viz_masks_command_writes_png(tmp_path):
    out = tmp_path / "masks.png"
    assert _ijepa(["viz", "masks", "--out", str(out), "--n", "3", "--ncols", "3", "--seed", "1"]) == 0
    w, h = _png(out)
    assert w > h > 100
    mb = mask_batch(None, [], n=3, seed=1)
    fig = draw_masks(mb.images, mb.masks_enc, mb.masks_pred, mb.grid_size, mb.patch_size, ncols=3)
    assert _image_axes(fig) == 6


# ----------------------------------------------------------------------------------------------------- curves


def _fake_run(folder, knn: bool = True):
    folder.mkdir()
    cols = ["epoch", "step", "loss", "lr", "wd", "momentum", "ctx_tokens", "tgt_tokens", "step_ms", "images_per_s",
            "skipped"]
    with open(folder / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for step in list(range(30)) + list(range(25, 40)):  # a resume re-logs steps 25..29
            w.writerow([step // 20, step, 5 * math.exp(-step / 10), 1e-3, 0.04, 0.996, 40, 9, 10, 100, 0])
    with open(folder / "monitor.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "target_std", "rankme"] + (["knn"] if knn else []))
        for step in (10, 20, 30, 40):
            w.writerow([step // 20, step, 0.01 * step, step / 2] + ([0.5 + step / 100] if knn else []))
    return folder


def test_viz_curves(tmp_path):
    run = _fake_run(tmp_path / "run")
    log, mon = read_run(run)
    assert log["step"].tolist() == list(range(40))  # duplicates from the resume counted once
    assert mon["knn"].tolist() == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert _image_axes(plot_curves(run)) == 0
    assert sum(1 for ax in plot_curves(run).axes if ax.lines) == 7  # loss lr wd momentum std rankme knn
    plain = _fake_run(tmp_path / "plain", knn=False)
    assert sum(1 for ax in plot_curves(plain).axes if ax.lines) == 6
    out = tmp_path / "curves.png"
    assert _ijepa(["viz", "curves", str(run), "--out", str(out)]) == 0
    _png(out)
    with pytest.raises(FileNotFoundError, match="log.csv"):
        read_run(tmp_path)


# --------------------------------------------------------------------------------------------------- features


def test_pca_finds_a_planted_foreground():
    # Background tokens: one vector plus a little noise; a 3x3 square per image, anywhere: foreground tokens,
    # offset along one direction and varied. Both PCA variants must recover exactly the squares, with the sign
    # chosen so that the foreground is the high side. (Squares that move around: a position that is foreground in
    # every image would vanish with the per-position mean, which is the documented price of center="position".)
    g = torch.Generator().manual_seed(0)
    n, grid, d = 24, (7, 7), 16
    bg, fg_dir = torch.randn(d, generator=g), torch.randn(d, generator=g)
    tokens = bg + 0.05 * torch.randn(n, 49, d, generator=g)
    planted = np.zeros((n, 7, 7), dtype=bool)
    for i in range(n):
        r, c = torch.randint(0, 5, (2,), generator=g).tolist()
        planted[i, r:r + 3, c:c + 3] = True
        ids = torch.from_numpy(np.flatnonzero(planted[i]))
        tokens[i, ids] += 3 * fg_dir + 0.5 * torch.randn(len(ids), d, generator=g)
    for center in ("global", "position"):
        for sign in (1, -1):  # the same data mirrored: orientation must not depend on the SVD's sign
            maps = pca_feature_maps(sign * tokens, grid, center=center)
            assert (maps.foreground == planted).all(), (center, sign)
            assert (maps.rgb[~planted] == 0).all() and maps.rgb[planted].max() > 0.5
    fig = draw_features(torch.rand(n, 1, 28, 28), maps)
    assert _image_axes(fig) == 3 * n


def _export_tiny(tmp_path, with_predictor: bool = True, name: str = "tiny.safetensors"):
    encoder = _tiny_encoder()
    predictor = None
    if with_predictor:
        torch.manual_seed(1)
        predictor = build_predictor(encoder, predictor_embed_dim=24, depth=1, num_heads=2)
    path = tmp_path / name
    export(encoder, path, "ijepa", predictor=predictor)
    return path


def test_viz_features_command(tmp_path):
    model = _export_tiny(tmp_path, with_predictor=False)
    out = tmp_path / "features.png"
    assert _ijepa(["viz", "features", str(model), "--out", str(out), "--n", "3", "--fit", "16"]) == 0
    w, h = _png(out)
    assert h > 200 and w > 200
    # any folder of images works too (resized to the encoder's input; colour averaged to its one channel)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out2 = tmp_path / "features_folder.png"
    assert _ijepa(["viz", "features", str(model), "--images", str(folder), "--out", str(out2), "--n", "3",
                   "--fit", "3"]) == 0
    _png(out2)


# ---------------------------------------------------------------------------------------------------- decoder


@pytest.fixture(scope="module")
def tiny_decoder():
    """A decoder trained briefly on a random-init tiny encoder's features (the target encoder of
    ``_tiny_world_model``): (encoder, decoder, stats, held-out images)."""
    torch.set_num_threads(1)
    enc = _tiny_encoder(seed=0, dim=32)
    val = _fmnist(256, train=False)
    dec, stats = train_decoder(enc, _fmnist(1024), val_images=val, steps=150, hidden=64, depth=1, batch_size=64)
    return enc, dec, stats, val


def test_decoder_beats_the_mean_image_on_held_out_images(tiny_decoder, tmp_path):
    # Even a random-init tiny encoder carries each patch's pixels in its tokens, so a briefly trained decoder
    # must reconstruct unseen images far better than the training set's mean image does (~10.6 dB).
    enc, dec, stats, val = tiny_decoder
    assert stats.steps == 150
    assert stats.mean_image_psnr == pytest.approx(psnr(_fmnist(1024).mean(0, keepdim=True).expand_as(val), val))
    assert stats.val_psnr > stats.mean_image_psnr + 4.0, stats
    path = save_decoder(dec, tmp_path / "d.safetensors", input_spec=FMNIST_SPEC, source="tiny", stats=stats)
    again, info = load_decoder(path)
    assert info["stats"]["val_psnr"] == pytest.approx(stats.val_psnr) and info["source"] == "tiny"
    assert torch.equal(decode_images(again, enc, val[:4]), decode_images(dec, enc, val[:4]))


def test_train_decoder_command(tmp_path, capsys):
    model = _export_tiny(tmp_path, with_predictor=False)
    out = tmp_path / "dec.safetensors"
    assert _ijepa(["train-decoder", str(model), "--out", str(out), "--steps", "3", "--train-images", "64",
                   "--val-images", "16", "--hidden", "16", "--depth", "1"]) == 0
    assert "held-out PSNR" in capsys.readouterr().out
    dec, info = load_decoder(out)
    assert dec.arch.embed_dim == 48 and info["stats"]["steps"] == 3


# -------------------------------------------------------------------------------------------------- predict


def test_box_ids_and_context_partition_the_grid():
    ids = box_ids((1, 2, 2, 3), (4, 6))
    assert ids.tolist() == [8, 9, 10, 14, 15, 16]
    ctx = context_ids((1, 2, 2, 3), (4, 6))
    assert sorted(ids.tolist() + ctx.tolist()) == list(range(24))
    with pytest.raises(VizError):
        box_ids((3, 0, 2, 1), (4, 6))
    boxes = sample_boxes((7, 7), 20, seed=0)
    sizes = {h * w for _, _, h, w in boxes}
    assert all(0.15 * 49 - 3 <= s <= 0.2 * 49 + 3 for s in sizes)  # target-sized, per the default mask config
    assert len(set(boxes)) > 5


def _tiny_world_model(steps: int, lr: float = 5e-3, batch_size: int = 32):
    """A tiny I-JEPA trained for a few steps on Fashion-MNIST with the real loss: the target encoder frozen at
    init (so the predictor has a stable target in so few steps), the context encoder and predictor learnt."""
    from ijepa.train.ijepa import IJEPA

    target = _tiny_encoder(seed=0, dim=32)
    encoder = _tiny_encoder(seed=0, dim=32)
    torch.manual_seed(1)
    predictor = build_predictor(encoder, predictor_embed_dim=32, depth=1, num_heads=2)
    model = IJEPA(encoder, predictor, target)
    sampler = MultiBlockMaskSampler(7, MaskConfig(min_keep=4))
    x = (_fmnist(2048) - 0.286) / 0.353
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(predictor.parameters()), lr=lr)
    g = torch.Generator().manual_seed(0)
    encoder.train()
    predictor.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        masks_enc, masks_pred = sampler(batch_size, g)
        loss = model(x[idx], masks_enc, masks_pred)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return WorldModel(encoder.eval(), predictor.eval(), target.eval(), "tiny")


def test_prediction_sees_only_the_context():
    wm = _tiny_world_model(steps=0)
    images = _fmnist(4, train=False)
    box = (2, 2, 3, 3)
    inside = images.clone()
    inside[..., 8:20, 8:20] = torch.rand(4, 1, 12, 12)  # pixels of the box only
    outside = images.clone()
    outside[..., :8, :] = torch.rand(4, 1, 8, 28)  # context pixels only
    base = predict_box(wm, images, [box] * 4)
    assert all(torch.allclose(a, b) for a, b in zip(base, predict_box(wm, inside, [box] * 4)))
    assert not any(torch.allclose(a, b) for a, b in zip(base, predict_box(wm, outside, [box] * 4)))


def test_prediction_is_about_its_own_image(tiny_decoder):
    # Own prediction vs the prediction made from another image's context, rendered in the same box. A briefly
    # trained predictor must be clearly closer to its own image's hidden content, in features (centred cosine;
    # raw cosines are all ~0.99 here) and in decoded pixels. The untrained predictor must not be: that is what
    # keeps the comparison from passing by construction.
    _, dec, _, _ = tiny_decoder
    images = _fmnist(128, train=False, start=1000)
    boxes = sample_boxes((7, 7), len(images), seed=1)
    untrained = box_specificity(_tiny_world_model(steps=0), images, boxes, decoder=dec)
    m = box_specificity(_tiny_world_model(steps=300), images, boxes, decoder=dec)
    assert m["feat_centred_cos_own"] > m["feat_centred_cos_other"] + 0.2, m
    assert m["decoder_mse_own"] < 0.85 * m["decoder_mse_other"], m
    assert m["decoder_mse_truth"] < m["decoder_mse_own"] < m["mean_image_mse"], m
    assert abs(untrained["feat_centred_cos_own"] - untrained["feat_centred_cos_other"]) < 0.02, untrained
    assert untrained["decoder_mse_own"] == pytest.approx(untrained["decoder_mse_other"], rel=0.02), untrained


def test_viz_predict_command(tmp_path, capsys):
    model = _export_tiny(tmp_path)
    dec, stats = train_decoder(_tiny_encoder(), _fmnist(64), steps=2, hidden=16, depth=1)
    dpath = save_decoder(dec, tmp_path / "d.safetensors", stats=stats)
    out = tmp_path / "predict.png"
    assert _ijepa(["viz", "predict", str(model), "--out", str(out), "--decoder", str(dpath), "--n", "3",
                   "--gallery", "40", "--measure", "8", "--box", "1,1,3,2"]) == 0
    assert "feat_cos_own" in capsys.readouterr().out
    w, h = _png(out)
    assert w > h  # 5 columns, 3 rows
    plain = tmp_path / "plain.png"
    assert _ijepa(["viz", "predict", str(model), "--out", str(plain), "--n", "2", "--gallery", "20",
                   "--measure", "0"]) == 0
    _png(plain)
    assert _ijepa(["viz", "predict", str(model), "--out", str(plain), "--box", "5,5,3,3", "--gallery", "20"]) == 1
    assert "does not fit" in capsys.readouterr().err
    no_pred = _export_tiny(tmp_path, with_predictor=False, name="encoder_only.safetensors")
    assert _ijepa(["viz", "predict", str(no_pred), "--out", str(plain)]) == 1
    assert "no predictor" in capsys.readouterr().err


def test_draw_predictions_panels():
    from ijepa.viz.predict import build_gallery, draw_predictions, render_predictions

    wm = _tiny_world_model(steps=0)
    images = _fmnist(3, train=False)
    gallery = build_gallery(wm.target_encoder, _fmnist(20))
    dec, _ = train_decoder(wm.target_encoder, _fmnist(32), steps=1, hidden=16, depth=1)
    boxes = [(0, 0, 2, 2), (3, 3, 3, 2), (1, 4, 2, 3)]
    r = render_predictions(wm, images, boxes, gallery=gallery, decoder=dec)
    assert _image_axes(draw_predictions(r)) == 3 * 5
    # outside the box, retrieval keeps the image's own pixels; the context panel greys exactly the box
    for i, (r0, c0, h, w) in enumerate(boxes):
        keep = torch.ones(28, 28, dtype=torch.bool)
        keep[r0 * 4:(r0 + h) * 4, c0 * 4:(c0 + w) * 4] = False
        assert torch.equal(r.retrieval[i, 0][keep], images[i, 0][keep])
        assert (r.context[i, 0][~keep] == 0.5).all() and torch.equal(r.context[i, 0][keep], images[i, 0][keep])
    r2 = render_predictions(wm, images, boxes, gallery=gallery)
    assert _image_axes(draw_predictions(r2)) == 3 * 3
    assert encode(wm.target_encoder, images).shape == (3, 49, 32)


def test_one_channel_encoders_of_any_size_read_fashion_mnist():
    # The CPU default trains at 36 px on Fashion-MNIST: its pictures resize the 28-px images, as the probe does.
    from ijepa.viz.features import load_images, pick_dataset

    spec36 = {**FMNIST_SPEC, "image_size": (36, 36)}
    assert pick_dataset(spec36) == "fashion_mnist"
    shown = load_images(spec36, 3, split="test", seed=0)
    assert shown.images.shape == (3, 1, 36, 36) and len(shown.names) == 3
    with pytest.raises(VizError, match="give a folder"):
        pick_dataset({"image_size": (36, 36), "in_chans": 3, "mean": (0.5,) * 3, "std": (0.5,) * 3})
