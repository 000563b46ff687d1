"""Interoperability: load any I-JEPA checkpoint into our models, and export to other libraries.

``load`` reads the reference's ``.pth.tar``, transformers ``IJepaModel`` directories (either key layout),
timm state dicts and exports, our training checkpoints and our ``.safetensors`` exports; ``export`` and
``convert`` write our format, a transformers directory or a timm export. Nothing here downloads anything
except ``download``. Every pickle is read with ``torch.load(weights_only=True)``; everything written is
safetensors + JSON.
"""

from .load import convert, export, load, read_weights
from .native import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointReadError,
    InteropError,
    UnknownFormatError,
    UnsafeCheckpointError,
)
from .registry import PUBLISHED, PublishedModel, describe, download

__all__ = ["PUBLISHED", "CheckpointMismatchError", "CheckpointNotFoundError", "CheckpointReadError",
           "InteropError", "PublishedModel", "UnknownFormatError", "UnsafeCheckpointError", "convert",
           "describe", "download", "export", "load", "read_weights"]
