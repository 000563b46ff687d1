"""Decoding one image, and what stands in for one that cannot be used.

The policy for files in the wild:

- **Unreadable files are skipped, not fatal.** A corrupt, truncated or foreign file decodes to an
  :class:`Unreadable` (which file, and why) in place of the image; datasets pass it on, the collate functions
  drop it and report it, and the training summary and the feature files name it.
- **Huge images are skipped above a pixel limit** (``max_pixels``, ``data.max_image_pixels`` in a config; default
  :data:`DEFAULT_MAX_PIXELS`, 100 megapixels, e.g. 10,000 × 10,000), read from the header before anything is
  decoded. This limit replaces PIL's decompression-bomb check: PIL's warning (above 89 MP) is silenced, since the
  limit decides, and PIL's own refusal (above 179 MP) is lifted when the limit is higher or ``None`` (no limit) —
  that one setting, ``PIL.Image.MAX_IMAGE_PIXELS``, is process-wide.
- **JPEGs are decoded at the size the crop needs**: with ``draft_size``, libjpeg decodes at 1/2, 1/4 or 1/8 scale
  as long as both sides stay at least ``draft_size`` (callers pass twice the crop, plenty for a random-resized
  crop of 30-100% of the area), so a 6000 × 4000 photo for a 224-px crop costs a 1500 × 1000 decode.
  Other formats have no such shortcut and are decoded whole.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import IO, NamedTuple

from PIL import Image, UnidentifiedImageError

__all__ = ["DECODE_ERRORS", "DEFAULT_MAX_PIXELS", "SkipTally", "Unreadable", "decode_image", "header_problem"]

DEFAULT_MAX_PIXELS = 100_000_000

# Everything PIL raises for a file that is not a decodable image: UnidentifiedImageError and "image file is
# truncated" are OSErrors; some decoders raise ValueError, SyntaxError or EOFError.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
)


class Unreadable(NamedTuple):
    """A sample that could not be used: ``source`` (the file, or shard and key) and ``reason`` (one line)."""

    source: str
    reason: str


def _lift_pil_limit(max_pixels: int | None) -> None:
    """Make sure PIL does not refuse, before this module's check, an image that ``max_pixels`` allows."""
    pil = Image.MAX_IMAGE_PIXELS
    if pil is None:
        return
    if max_pixels is None:
        Image.MAX_IMAGE_PIXELS = None
    elif max_pixels > 2 * pil:  # PIL raises DecompressionBombError above twice its MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def decode_image(fp: str | os.PathLike | IO[bytes], mode: str = "RGB", *, source: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None
                 ) -> Image.Image | Unreadable:
    """The image at ``fp`` (a path or a binary file object) fully decoded into PIL ``mode``, or an
    :class:`Unreadable` saying why not (``source`` names it there; by default the path).

    ``max_pixels``: images with more pixels are skipped unread (``None``: no limit). ``draft_size``: JPEGs are
    decoded at the smallest 1/2^k scale that keeps both sides at least this many pixels (``None``: full size).
    """
    name = source if source is not None else (os.fspath(fp) if isinstance(fp, (str, os.PathLike)) else "<bytes>")
    try:
        img = _open(fp, max_pixels)
        with img:
            too_large = _over_limit(img, max_pixels)
            if too_large:
                return Unreadable(name, too_large)
            if draft_size and img.format == "JPEG":
                img.draft(None, (draft_size, draft_size))
            # convert() forces the full decode, so truncation surfaces here rather than later inside the
            # transform where it could not be told apart from a real bug.
            return img.convert(mode)
    except Image.DecompressionBombError as e:
        return Unreadable(name, _refused_by_pil(e, max_pixels))
    except DECODE_ERRORS as e:
        return Unreadable(name, f"{type(e).__name__}: {e}")


def _open(fp: str | os.PathLike | IO[bytes], max_pixels: int | None) -> Image.Image:
    """``Image.open`` (the header only) under this module's pixel limit rather than PIL's."""
    _lift_pil_limit(max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fp)


def _refused_by_pil(e: Exception, max_pixels: int | None) -> str:
    """PIL refuses, while reading the header, an image above twice its own limit; :func:`_lift_pil_limit` raises
    that limit above ``max_pixels``, so such an image is above ``max_pixels`` too: said in this module's words."""
    limit = "PIL's own" if max_pixels is None else f"{max_pixels:,} pixels"
    return f"image above the limit of {limit}, max_image_pixels; PIL: {type(e).__name__}: {e}"


def _over_limit(img: Image.Image, max_pixels: int | None) -> str | None:
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        return f"{w}x{h} image ({w * h:,} pixels) is above the limit of {max_pixels:,} (max_image_pixels)"
    return None


def header_problem(fp: str | os.PathLike | IO[bytes], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the file at ``fp`` cannot be used, from its header alone: not an image PIL identifies, or above the
    pixel limit; ``None`` when it looks usable (a damaged image body is only found by decoding it)."""
    try:
        with _open(fp, max_pixels) as img:
            return _over_limit(img, max_pixels)
    except UnidentifiedImageError:  # its message names a file object, not the file: say it plainly
        return "not an image: PIL identifies no image format in it"
    except Image.DecompressionBombError as e:
        return _refused_by_pil(e, max_pixels)
    except DECODE_ERRORS as e:
        return f"not a readable image: {type(e).__name__}: {e}"


class SkipTally:
    """Skipped samples over a run: each distinct source once (with the first reason seen), and every occurrence
    (a bad file is met once per epoch). ``None`` entries (a skip that names no source) count as occurrences."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}
        self.occurrences = 0

    def add(self, skipped: Iterable[Unreadable | None]) -> None:
        for s in skipped:
            self.occurrences += 1
            if s is not None:
                self.reasons.setdefault(s.source, s.reason)

    @property
    def files(self) -> int:
        return len(self.reasons)

    def line(self, shown: int = 5) -> str:
        """One line for a summary: how many distinct files, how many occurrences, the first few names."""
        names = list(self.reasons)
        listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
        times = "" if self.occurrences == self.files else f" ({self.occurrences} occurrences)"
        return f"skipped {self.files} unreadable file{'s' if self.files != 1 else ''}{times}: {listed}"
