"""Interoperability: load any I-JEPA checkpoint into our models, and export to other libraries.

``load`` reads the reference's ``.pth.tar``, transformers ``IJepaModel`` directories (either key layout),
timm state dicts and exports, our training checkpoints and our ``.safetensors`` exports; ``export`` and
``convert`` write our format, a transformers directory or a timm export. Nothing here downloads anything
except ``download``. Every pickle is read with ``torch.load(weights_only=True)``; everything written is
safetensors + JSON, replaced atomically. Every checkpoint problem raises an
:class:`ijepa.errors.CheckpointError` (the subclasses, e.g. ``CheckpointMismatchError``, live there too).

The files, in the order ``load`` uses them: ``load.py`` (entry points) -> ``registry.py`` (published names)
-> ``detect.py`` (which format) -> one file per format (``reference.py``, ``hf.py``, ``timm.py``,
``native.py``: detection, reader, key map, writer) -> ``build.py`` (the models, with ``arch.py``). A transformers
export carries a model card (``modelcard.py``); ``push.py`` uploads one to the Hugging Face Hub (``ijepa push``).
"""

from .detect import read_weights
from .load import convert, export, load
from .registry import PUBLISHED, PublishedModel, describe, download

__all__ = ["PUBLISHED", "PublishedModel", "convert", "describe", "download", "export", "load", "read_weights"]
