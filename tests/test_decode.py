"""The image-decoding policy: unreadable files become an Unreadable (which file, why), images above the pixel
limit are skipped from their header alone, JPEGs decode at the size the crop needs."""

import io
import struct
import warnings
import zlib

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from ijepa.data.datasets import (
    FlatImageFolder,
    ImageFolderDataset,
    TensorImageDataset,
    dataset_info,
    read_sample,
    sample_source,
)
from ijepa.data.decode import DEFAULT_MAX_PIXELS, SkipTally, Unreadable, decode_image


def constant_png(path, width: int, height: int, value: int = 128) -> None:
    """A valid grayscale PNG of one colour, written without holding the image: 12000 x 12000 is ~160 KB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    rows = (b"\x00" + bytes([value]) * width) * 100
    body = b"".join(z.compress(rows) for _ in range(height // 100)) + z.compress(
        (b"\x00" + bytes([value]) * width) * (height % 100)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_a_corrupt_file_is_an_unreadable_naming_it(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = decode_image(bad)
    assert isinstance(out, Unreadable) and out.source == str(bad) and "UnidentifiedImageError" in out.reason
    good = tmp_path / "good.png"
    Image.effect_noise((64, 48), 60).convert("RGB").save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert isinstance(decode_image(truncated, source="t.png"), Unreadable)
    assert decode_image(truncated, source="t.png").source == "t.png"
    img = decode_image(good, "L")
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (64, 48)


def test_a_huge_image_is_skipped_from_its_header_without_a_pil_warning(tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"
    constant_png(huge, 12000, 12000)
    assert huge.stat().st_size < 1_000_000

    def no_decode(self, *a, **k):
        raise AssertionError("the huge image was decoded")
    monkeypatch.setattr(Image.Image, "convert", no_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning (144 MP > 89 MP) must not escape
        out = decode_image(huge)
    assert isinstance(out, Unreadable)
    assert out.reason == ("12000x12000 image (144,000,000 pixels) is above the limit of 100,000,000 "
                          "(max_image_pixels)")
    assert 12000 * 12000 > DEFAULT_MAX_PIXELS


def test_the_pixel_limit_is_configurable_both_ways(tmp_path, monkeypatch):
    p = tmp_path / "a.png"
    Image.new("RGB", (50, 40), (1, 2, 3)).save(p)
    assert isinstance(decode_image(p, max_pixels=1999), Unreadable)
    assert decode_image(p, max_pixels=2000).size == (50, 40)
    # a limit above PIL's own refusal (twice its MAX_IMAGE_PIXELS) is honoured, and None means no limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert decode_image(p, max_pixels=10_000).size == (50, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert decode_image(p, max_pixels=None).size == (50, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    out = decode_image(p, max_pixels=1000)  # PIL refuses first: still an Unreadable, not an exception
    assert isinstance(out, Unreadable) and "DecompressionBombError" in out.reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_jpegs_decode_at_the_draft_size_other_formats_whole(tmp_path, fmt):
    p = tmp_path / f"big.{fmt.lower()}"
    Image.new("RGB", (1600, 1200), (30, 120, 200)).save(p, fmt)
    assert decode_image(p).size == (1600, 1200)
    drafted = decode_image(p, draft_size=256)
    # JPEG: the largest 1/2^k reduction keeping both sides >= 256 is 1/4 -> 400x300; PNG has no such decoder
    assert drafted.size == ((400, 300) if fmt == "JPEG" else (1600, 1200))
    assert drafted.mode == "RGB" and max(abs(a - b) for a, b in zip(drafted.getpixel((10, 10)), (30, 120, 200))) < 4
    assert decode_image(p, draft_size=2000).size == (1600, 1200)  # never below the size asked for


def test_decode_reads_file_objects(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (8, 8), 7).save(buf, "PNG")
    buf.seek(0)
    assert decode_image(buf, "L", source="shard-0.tar/k").getpixel((0, 0)) == 7
    out = decode_image(io.BytesIO(b"junk"), source="shard-0.tar/k2")
    assert isinstance(out, Unreadable) and out.source == "shard-0.tar/k2"


def test_skip_tally_counts_distinct_files_and_occurrences():
    t = SkipTally()
    bad = [Unreadable(f"bad_{i}.png", "UnidentifiedImageError: x") for i in range(4)]
    t.add(bad)
    t.add(bad[:3])
    t.add([None])
    assert t.files == 4 and t.occurrences == 8
    assert t.line() == "skipped 4 unreadable files (8 occurrences): bad_0.png, bad_1.png, bad_2.png, bad_3.png"
    one = SkipTally()
    one.add(bad[:1])
    assert one.line() == "skipped 1 unreadable file: bad_0.png"
    many = SkipTally()
    many.add([Unreadable(f"f{i}", "r") for i in range(8)])
    assert many.line(shown=2) == "skipped 8 unreadable files: f0, f1 and 6 more"


def _folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "a" / "red.png")
    (root / "a" / "zz_bad.png").write_bytes(b"junk")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(root / "b" / "blue.png")
    Image.new("RGB", (120, 100), (0, 255, 0)).save(root / "b" / "wide.jpg")
    return root


def test_folder_datasets_name_each_sample_and_say_why_one_is_unusable(tmp_path):
    root = _folder(tmp_path)
    ds = ImageFolderDataset(root)
    assert [ds.source(i) for i in range(len(ds))] == ["a/red.png", "a/zz_bad.png", "b/blue.png", "b/wide.jpg"]
    with pytest.warns(RuntimeWarning, match="zz_bad.png"):
        bad = ds.read(1)
    assert bad == Unreadable("a/zz_bad.png", bad.reason) and "UnidentifiedImageError" in bad.reason
    assert ds[1] is None  # the DataLoader contract stays: None for an unusable file
    sub = Subset(Subset(ds, [3, 2, 1]), [2, 0])
    assert [sample_source(sub, i) for i in range(2)] == ["a/zz_bad.png", "b/wide.jpg"]
    assert isinstance(read_sample(sub, 0), Unreadable) and read_sample(sub, 1)[1] == 1
    assert dataset_info(sub) == {"root": str(root), "classes": ["a", "b"]}
    # the pixel limit and the JPEG draft size reach the decoder
    small = FlatImageFolder(root, max_pixels=100, draft_size=30)
    with pytest.warns(RuntimeWarning):
        items = [small.read(i) for i in range(len(small))]
    wide = items[[small.source(i) for i in range(len(small))].index("b/wide.jpg")]
    assert isinstance(wide, Unreadable) and "above the limit of 100" in wide.reason
    drafted = FlatImageFolder(root, draft_size=30).read(3)[0]
    assert drafted.size == (60, 50)  # 1/2 scale: both sides stay >= 30


def test_in_memory_samples_are_named_by_index():
    ds = TensorImageDataset(torch.zeros(5, 4, 4, dtype=torch.uint8), torch.arange(5))
    assert [sample_source(ds, i) for i in range(5)] == [0, 1, 2, 3, 4]
    assert read_sample(ds, 2)[1] == 2 and dataset_info(ds)["root"] is None
