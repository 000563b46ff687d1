"""Sharded tar input: stream an ImageNet-22K-size dataset from a few thousand tar files instead of a folder of
millions of small files.

Layout (WebDataset-compatible, written and read without the ``webdataset`` package): POSIX tar files
``<prefix>-000000.tar``, ``<prefix>-000001.tar``, … in one folder, each holding samples as consecutive members
that share a key: ``KEY.<ext>`` (the image file's bytes exactly as stored, ext one of
:data:`~ijepa.data.datasets.IMG_EXTENSIONS`) and, for labelled data, ``KEY.cls`` (the integer label as text).
Beside the shards, ``index.json`` lists every shard with its sample count and byte size, so a reader knows the
dataset's length and each rank's share without opening a tar, and ``classes.json`` (labelled data) lists the
class names, label ``i`` being ``classes[i]``.

:func:`.writer.write_shards` turns an image folder into shards; :func:`.writer.write_index` indexes tars written
by other tools; :class:`.reader.ShardDataset` reads them back as an ``IterableDataset`` of ``(image, label)`` —
``None`` for a sample that cannot be decoded, as the folder datasets do, so
:func:`~ijepa.data.datasets.collate_skip_corrupt` counts it. How an epoch is split (see
:class:`.reader.ShardDataset`): the epoch is the concatenation of all shards in an order seeded by
``seed + epoch``; rank ``r`` takes the contiguous sample range ``[r·Q, (r+1)·Q)`` with ``Q = total // world_size``,
and each DataLoader worker a contiguous part of its rank's range. Every rank therefore yields exactly the same
number of samples (DDP needs equal step counts), no sample is read twice in an epoch, and the
``total % world_size`` left over are different samples each epoch.

From the command line: ``ijepa shards SRC DST`` or ``python -m ijepa.data.shards SRC DST``. The folder may be a
URL, read and written through fsspec (``s3://``, ``gs://``, ``http(s)://``: :mod:`.remote`).

One concern a module, each name imported from its module: :mod:`.format` (file names, errors, ``index.json``, tar
members <-> samples), :mod:`.writer`, :mod:`.reader` (with ``build_shard_loader``), :mod:`.remote` (URLs) and
:mod:`.cli` (``ijepa shards``). This package imports none of them: the reader and writer import torch, and
``ijepa --help`` reads the parser in :mod:`.cli` without it.
"""
