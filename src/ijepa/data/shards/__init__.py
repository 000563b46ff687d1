"""Sharded tar input: stream an ImageNet-22K-size dataset from a few thousand tar files instead of a folder of
millions of small files.

Layout (WebDataset-compatible, written and read without the ``webdataset`` package): POSIX tar files
``<prefix>-000000.tar``, ``<prefix>-000001.tar``, … in one folder, each holding samples as consecutive members
that share a key: ``KEY.<ext>`` (the image file's bytes exactly as stored, ext one of
:data:`~ijepa.data.datasets.IMG_EXTENSIONS`) and, for labelled data, ``KEY.cls`` (the integer label as text).
Beside the shards, ``index.json`` lists every shard with its sample count and byte size, so a reader knows the
dataset's length and each rank's share without opening a tar, and ``classes.json`` (labelled data) lists the
class names, label ``i`` being ``classes[i]``.

:func:`write_shards` turns an image folder into shards; :func:`write_index` indexes tars written by other tools;
:class:`ShardDataset` reads them back as an ``IterableDataset`` of ``(image, label)`` — ``None`` for a sample
that cannot be decoded, as the folder datasets do, so :func:`~ijepa.data.datasets.collate_skip_corrupt`
counts it. How an epoch is split (see :class:`ShardDataset`): the epoch is the concatenation of all shards in
an order seeded by ``seed + epoch``; rank ``r`` takes the contiguous sample range ``[r·Q, (r+1)·Q)`` with
``Q = total // world_size``, and each DataLoader worker a contiguous part of its rank's range. Every rank
therefore yields exactly the same number of samples (DDP needs equal step counts), no sample is read twice in an
epoch, and the ``total % world_size`` left over are different samples each epoch.

From the command line: ``ijepa shards SRC DST`` or ``python -m ijepa.data.shards SRC DST``.

The code, one concern a module: :mod:`.format` (file names, errors, ``index.json``, tar members <-> samples),
:mod:`.writer` (:func:`write_shards`, :func:`write_index`), :mod:`.reader` (:class:`ShardDataset`,
:func:`build_shard_loader`) and :mod:`.cli` (``ijepa shards``).
"""

from __future__ import annotations

import importlib

# Each name is imported from its module on first use, so that importing .cli (the `ijepa shards` parser) does
# not import the reader and writer, and with them torch.
_EXPORTS = {
    "CLASSES_NAME": "format", "INDEX_NAME": "format", "ShardInfo": "format", "ShardReadWarning": "format",
    "ShardsNotFoundError": "format", "read_index": "format",
    "write_index": "writer", "write_shards": "writer",
    "ShardDataset": "reader", "build_shard_loader": "reader",
    "build_arg_parser": "cli", "main": "cli", "shards_command": "cli",
}

__all__ = ["CLASSES_NAME", "INDEX_NAME", "ShardDataset", "ShardInfo", "ShardReadWarning", "ShardsNotFoundError",
           "build_shard_loader", "main", "read_index", "shards_command", "write_index", "write_shards"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
