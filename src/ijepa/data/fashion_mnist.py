"""Fashion-MNIST from its IDX files (as Debian's ``dataset-fashion-mnist`` installs them).

The whole set is 47 MB as uint8, so it is read once into memory; batches are then cut from tensors
with no per-image Python work, which matters on a 2-core machine where a loader process would steal
half of the compute.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, DatasetNotFoundError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
# Per-pixel statistics of the 60,000 training images, scaled to [0, 1].
MEAN = (0.2860,)
STD = (0.3530,)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DatasetNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install it with "
        "`apt-get update && apt-get install -y dataset-fashion-mnist` (files go to "
        f"{DEFAULT_ROOT}), or pass the folder holding the IDX files (data.root_path=DIR), "
        "or train on any folder of images (data.dataset=folder data.root_path=DIR)."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: truncated or corrupt IDX file ({len(data) - header} bytes of data, "
                         f"{expected} expected for shape {shape})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def load_fashion_mnist(root: str | os.PathLike | None = None, train: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: uint8 (N, 28, 28) and int64 (N,); N = 60,000 (train) or 10,000."""
    root = Path(root or os.environ.get("IJEPA_FASHION_MNIST", DEFAULT_ROOT))
    img_stem, lbl_stem = _FILES[train]
    images = read_idx(_find(root, img_stem))
    labels = read_idx(_find(root, lbl_stem))
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
