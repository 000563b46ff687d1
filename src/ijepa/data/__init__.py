"""Data: datasets (image folders, in-memory tensors, Fashion-MNIST), transforms and resumable loaders.

Knows nothing of models or masks.
"""

# Loaded on first use (as ``ijepa`` itself does), so that importing a torch-free part of ``ijepa.data`` (the
# ``ijepa shards`` argument parser, read by ``ijepa --help``) does not import torch.
_EXPORTS = {
    "IMG_EXTENSIONS": "datasets", "CorruptImageWarning": "datasets", "FlatImageFolder": "datasets",
    "ImageFolderDataset": "datasets", "TensorImageDataset": "datasets", "collate_skip_corrupt": "datasets",
    "is_image_file": "datasets", "DatasetNotFoundError": "fashion_mnist", "load_fashion_mnist": "fashion_mnist",
    "InMemoryBatches": "loader", "ResumableDistributedSampler": "loader", "build_loader": "loader",
    "ShardDataset": "shards", "build_shard_loader": "shards", "write_shards": "shards",
    "IMAGENET_MEAN": "transforms", "IMAGENET_STD": "transforms", "BatchRandomResizedCrop": "transforms",
    "ConvertMode": "transforms", "GaussianBlur": "transforms", "get_color_distortion": "transforms",
    "make_eval_transform": "transforms", "make_pretrain_transform": "transforms", "normalize_batch": "transforms",
    "open_images": "sources", "TensorImages": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
