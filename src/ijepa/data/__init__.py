"""Data: datasets (image folders, in-memory tensors, Fashion-MNIST), transforms and resumable loaders.

Knows nothing of models or masks.
"""

from .datasets import (
    IMG_EXTENSIONS,
    CorruptImageWarning,
    FlatImageFolder,
    ImageFolderDataset,
    TensorImageDataset,
    collate_skip_corrupt,
    is_image_file,
)
from .fashion_mnist import DatasetNotFoundError, load_fashion_mnist
from .loader import InMemoryBatches, ResumableDistributedSampler, build_loader
from .shards import ShardDataset, build_shard_loader, write_shards
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchRandomResizedCrop,
    ConvertMode,
    GaussianBlur,
    get_color_distortion,
    make_eval_transform,
    make_pretrain_transform,
    normalize_batch,
)

__all__ = [
    "ShardDataset",
    "build_shard_loader",
    "write_shards",
    "IMG_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchRandomResizedCrop",
    "ConvertMode",
    "CorruptImageWarning",
    "DatasetNotFoundError",
    "FlatImageFolder",
    "GaussianBlur",
    "ImageFolderDataset",
    "InMemoryBatches",
    "ResumableDistributedSampler",
    "TensorImageDataset",
    "build_loader",
    "collate_skip_corrupt",
    "get_color_distortion",
    "is_image_file",
    "load_fashion_mnist",
    "make_eval_transform",
    "make_pretrain_transform",
    "normalize_batch",
]
