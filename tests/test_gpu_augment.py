"""GPU-side augmentation (data/gpu_augment.py): the same crop boxes as the worker path, the same colour and blur
operations as torchvision's, and the decode-only worker side."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from ijepa.data.datasets import CorruptImageWarning, FlatImageFolder
from ijepa.data.decode import Unreadable
from ijepa.data.gpu_augment import (
    BatchAugment,
    CanvasFolder,
    DecodeShrink,
    adjust_hue,
    blur_subset,
    default_max_size,
    jitter,
    sample_crop_boxes,
    shrink,
    to_canvas,
)

KS_C_0001 = 1.949  # two-sample Kolmogorov-Smirnov: c(alpha) for alpha = 0.001
N_BOXES = 4000


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                        - np.searchsorted(b, grid, side="right") / len(b)).max())


def ks_critical(n: int, m: int) -> float:
    return KS_C_0001 * math.sqrt((n + m) / (n * m))


def relative(boxes: np.ndarray, h: int, w: int) -> dict[str, np.ndarray]:
    """(x0, y0, bw, bh) rows -> the box's area fraction, log aspect ratio and centre, relative to the image."""
    x0, y0, bw, bh = boxes.T
    return {"scale": bw * bh / (h * w), "log_aspect": np.log(bw / bh), "cx": (x0 + bw / 2) / w,
            "cy": (y0 + bh / 2) / h}


def worker_boxes(h: int, w: int, scale=(0.3, 1.0), n: int = N_BOXES, seed: int = 0) -> np.ndarray:
    """The worker path's boxes: torchvision RandomResizedCrop on the full-size image."""
    img = torch.zeros(1, h, w)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rows = [T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    return np.array([[j, i, bw, bh] for i, j, bh, bw in rows], dtype=np.float64)


def device_boxes(h: int, w: int, max_size: int, scale=(0.3, 1.0), n: int = N_BOXES, seed: int = 1):
    """This path's boxes, drawn for the image as the workers shrank it."""
    sh, sw = shrink(torch.zeros(1, h, w, dtype=torch.uint8), max_size).shape[-2:]
    sizes = torch.tensor([[sh, sw]] * n)
    boxes = sample_crop_boxes(sizes[:, 0], sizes[:, 1], scale, (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
    return boxes.numpy(), sh, sw


@pytest.mark.parametrize("h,w", [(375, 500), (500, 333), (300, 700)])
def test_gpu_crop_boxes_have_the_worker_paths_distribution(h, w):
    """Area fraction, aspect ratio and centre of the boxes, relative to the image: the device path on the shrunk
    image against torchvision's RandomResizedCrop on the original, two-sample KS at alpha = 0.001. (300, 700)
    rejects many draws and falls back to the centre crop for some images."""
    ref = relative(worker_boxes(h, w), h, w)
    boxes, sh, sw = device_boxes(h, w, max_size=448)
    ours = relative(boxes, sh, sw)
    crit = ks_critical(N_BOXES, N_BOXES)
    for key in ref:
        d = ks_statistic(ref[key], ours[key])
        assert d < crit, f"{key}: KS {d:.4f} >= {crit:.4f} for a {h}x{w} image"


def test_too_wide_images_take_the_centre_crop_fallback_on_both_paths():
    """200 x 1000: no box of 30% of the area with aspect <= 4/3 fits, so both paths always give the centred box
    of aspect 4/3 and full height (the same up to rounding at each path's size)."""
    ref = relative(worker_boxes(200, 1000, n=200), 200, 1000)
    boxes, sh, sw = device_boxes(200, 1000, max_size=448, n=200)
    ours = relative(boxes, sh, sw)
    assert (boxes == boxes[0]).all() and boxes[0][3] == sh
    for key in ref:
        assert np.ptp(ref[key]) == 0 and abs(ref[key][0] - ours[key][0]) < 0.01, key


def test_box_distribution_test_detects_a_different_scale_range():
    """The test above has power: boxes drawn with scale (0.4, 1.0) are told apart from (0.3, 1.0)."""
    ref = relative(worker_boxes(375, 500), 375, 500)
    boxes, sh, sw = device_boxes(375, 500, max_size=448, scale=(0.4, 1.0))
    assert ks_statistic(ref["scale"], relative(boxes, sh, sw)["scale"]) > ks_critical(N_BOXES, N_BOXES)


def test_boxes_fit_their_own_image_in_a_mixed_batch():
    sizes = torch.tensor([[375, 500], [500, 333], [64, 640], [224, 224], [1, 5]] * 200)
    b = sample_crop_boxes(sizes[:, 0], sizes[:, 1], (0.3, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    x0, y0, bw, bh = b.unbind(1)
    assert (bw >= 1).all() and (bh >= 1).all() and (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + bw <= sizes[:, 1]).all() and (y0 + bh <= sizes[:, 0]).all()
    assert (b == b.round()).all()


def test_decode_shrink_bounds_the_longer_side_and_replicates_edges():
    img = (torch.rand(3, 375, 500) * 255).to(torch.uint8)
    canvas, size = DecodeShrink(448)(img)
    assert canvas.shape == (3, 448, 448) and canvas.dtype == torch.uint8 and size.tolist() == [336, 448]
    assert torch.equal(canvas[:, 336:, :], canvas[:, 335:336, :].expand(-1, 112, -1))
    small = (torch.rand(3, 100, 60) * 255).to(torch.uint8)
    canvas, size = DecodeShrink(448)(TF.to_pil_image(small))  # PIL in, no resize when it already fits
    assert size.tolist() == [100, 60] and torch.equal(canvas[:, :100, :60], small)
    assert torch.equal(canvas[:, :100, 60:], small[:, :, 59:].expand(-1, -1, 388))
    gray, _ = DecodeShrink(64, in_chans=1)(TF.to_pil_image(small))
    assert gray.shape == (1, 64, 64)
    from_pil, size_pil = DecodeShrink(448)(TF.to_pil_image(img))  # PIL's resize and torchvision's: one result
    assert size_pil.tolist() == [336, 448]
    assert (from_pil.float() - canvas_of(img, 448).float()).abs().mean() < 2.0
    assert default_max_size(224) == 512 and DecodeShrink(512)(img)[1].tolist() == [375, 500]  # ImageNet-size: kept


def canvas_of(img, max_size):
    return DecodeShrink(max_size)(img)[0]


def test_crop_of_an_upscaled_box_equals_torchvisions_resized_crop():
    """Where both read only the box's pixels (all but the outer ring), roi_align's crop is bilinear resizing."""
    img = torch.rand(3, 60, 80)
    canvas = to_canvas((img * 255).round().to(torch.uint8), 96)[None]
    aug = BatchAugment(48)
    boxes = torch.tensor([[10.0, 7.0, 30.0, 25.0]], dtype=torch.float64)
    ours = aug.crop(canvas, boxes)[0]
    ref = TF.resized_crop(canvas[0].float() / 255, 7, 10, 25, 30, [48, 48], antialias=False)
    assert torch.allclose(ours[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5)


def test_crop_of_a_downscaled_box_is_antialiased():
    yy, xx = torch.meshgrid(torch.arange(200.0), torch.arange(300.0), indexing="ij")
    img = ((torch.sin(xx / 9) * torch.cos(yy / 7) + 1) * 127.5).round().to(torch.uint8).expand(3, -1, -1)
    canvas = to_canvas(img.contiguous(), 320)[None]
    ours = BatchAugment(64).crop(canvas, torch.tensor([[0.0, 0.0, 300.0, 200.0]], dtype=torch.float64))[0]
    ref = TF.resize(img.float() / 255, [64, 64], antialias=True)
    assert (ours - ref).abs().mean() < 0.01


def _reference_jitter(img: torch.Tensor, f: torch.Tensor, order: list[int]) -> torch.Tensor:
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for op in order:
        img = ops[op](img, float(f[op]))
    return img


def test_jitter_is_torchvisions_colour_jitter_in_each_images_order():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 20, 24, generator=g)
    factors = torch.stack([0.5 + torch.rand(8, generator=g), 0.5 + torch.rand(8, generator=g),
                           0.5 + torch.rand(8, generator=g), 0.4 * torch.rand(8, generator=g) - 0.2], dim=1)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(8)])
    on = torch.tensor([True, True, False, True, True, True, False, True])
    ours = jitter(x, factors, order, on)
    for i in range(8):
        ref = _reference_jitter(x[i], factors[i], order[i].tolist()) if on[i] else x[i]
        # 1e-4: our luma is PIL's (0.299 R, as the worker path's PIL images get), torchvision's tensors use 0.2989
        assert torch.allclose(ours[i], ref, atol=1e-4), i


def test_hue_is_torchvisions():
    x = torch.rand(4, 3, 16, 16)
    shift = torch.tensor([0.1, -0.3, 0.45, 0.0])
    ours = adjust_hue(x, shift.view(-1, 1, 1, 1))
    for i in range(4):
        assert torch.allclose(ours[i], TF.adjust_hue(x[i], float(shift[i])), atol=1e-5)


def test_blur_is_a_gaussian_of_each_images_sigma():
    x = torch.rand(5, 3, 32, 32)
    on = torch.tensor([True, False, True, True, False])
    sigma = torch.tensor([0.3, 1.0, 2.0, 1.2, 0.5])
    ours = blur_subset(x, on, sigma)
    k = 2 * math.ceil(3 * 2.0) + 1
    for i in range(5):
        ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2) if on[i] else x[i]
        assert torch.allclose(ours[i], ref, atol=1e-5), i


def test_batch_augment_is_reproducible_and_normalised():
    imgs = [(torch.rand(3, h, w) * 255).to(torch.uint8) for h, w in [(375, 500), (500, 333), (120, 90)]]
    items = [DecodeShrink(256)(im) for im in imgs]
    canvases, sizes = torch.stack([c for c, _ in items]), torch.stack([s for _, s in items])
    aug = BatchAugment(64, horizontal_flip=True, color_distortion=True, color_jitter_strength=0.5,
                       gaussian_blur=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    a = aug(canvases, sizes, torch.Generator().manual_seed(3))
    b = aug(canvases, sizes, torch.Generator().manual_seed(3))
    c = aug(canvases, sizes, torch.Generator().manual_seed(4))
    assert a.shape == (3, 3, 64, 64) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -2.0 - 1e-6 and a.max() <= 2.0 + 1e-6  # (x - 0.5) / 0.25 for x in [0, 1]


def test_boxes_do_not_depend_on_the_other_options():
    sizes = torch.tensor([[375, 500]] * 16)
    plain = BatchAugment(64).sample(sizes, torch.Generator().manual_seed(0))
    full = BatchAugment(64, horizontal_flip=True, color_distortion=True, color_jitter_strength=1.0,
                        gaussian_blur=True).sample(sizes, torch.Generator().manual_seed(0))
    assert torch.equal(plain.boxes, full.boxes)
    assert not plain.flip.any() and not plain.jitter.any() and not plain.gray.any() and not plain.blur.any()


def _jpeg(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def test_canvas_folder_decodes_with_torchvision_and_skips_corrupt_files(tmp_path):
    _jpeg(tmp_path / "a.jpg", 375, 500, 0)
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "c.bmp")  # torchvision cannot: PIL reads it
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _jpeg(tmp_path / "e.jpg", 900, 1200, 1)  # larger than the canvas: PIL's draft decoding, then a resize
    ds = CanvasFolder(FlatImageFolder(tmp_path, DecodeShrink(512), draft_size=448))
    (ca, sa), la = ds[0]
    assert ca.shape == (3, 512, 512) and sa.tolist() == [375, 500] and la == -1
    assert ds[1][0][1].tolist() == [40, 30] and ds[1][0][0].shape[0] == 3
    assert ds[2][0][1].tolist() == [40, 30]
    with pytest.warns(CorruptImageWarning, match="d.jpg"):
        assert ds[3] is None
    assert isinstance(ds.read(3), Unreadable)
    assert ds[4][0][1].tolist() == [384, 512]
    pil = CanvasFolder(FlatImageFolder(tmp_path, DecodeShrink(512)), decoder="pil")[0][0][0]
    assert (pil.float() - ca.float()).abs().mean() < 2.0  # two libjpeg builds, one image
    with pytest.raises(TypeError, match="DecodeShrink"):
        CanvasFolder(FlatImageFolder(tmp_path))


def test_canvas_folder_keeps_the_pixel_limit(tmp_path):
    _jpeg(tmp_path / "a.jpg", 300, 400, 0)
    ds = CanvasFolder(FlatImageFolder(tmp_path, DecodeShrink(512), max_pixels=100_000))
    with pytest.warns(CorruptImageWarning, match="above the limit"):
        assert ds[0] is None


@pytest.mark.parametrize("kind", ["imagefolder", "shards"])
def test_the_training_pipeline_augments_on_the_device_reproducibly(tmp_path, kind):
    from ijepa.config_sections import DataConfig
    from ijepa.data.shards.writer import write_shards
    from ijepa.train.distributed import DistInfo
    from ijepa.train.inputs import build_pipeline

    for i in range(12):
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        _jpeg(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.jpg", 60 + 7 * i, 80, i)
    folder = "imgs"
    if kind == "shards":
        write_shards(tmp_path / "imgs", tmp_path / "shards", max_count=5)
        folder = "shards"
    cfg = DataConfig(dataset=kind, root_path=str(tmp_path), image_folder=folder, batch_size=4, num_workers=0,
                     crop_size=32, gpu_augment=True, use_horizontal_flip=True)
    data = build_pipeline(cfg, DistInfo(), 0, torch.device("cpu"))
    first = [x for x, _ in data.epoch(0)]
    assert len(first) == 3 and all(x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in data.epoch(0)]))  # the same epoch again
    assert torch.equal([x for x, _ in data.epoch(0, start=1)][0], first[1])  # resuming mid-epoch
    assert not torch.equal([x for x, _ in data.epoch(1)][0], first[0])
