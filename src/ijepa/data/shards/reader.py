"""Reading tar shards: :class:`ShardDataset` streams ``(image, label)`` samples, split across ranks and
DataLoader workers, through a seeded shuffle buffer, resumable mid-epoch; :func:`build_shard_loader` wraps it
in a DataLoader."""

from __future__ import annotations

import bisect
import io
import itertools
import os
import random
import tarfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ...seeding import stream_seed
from ..datasets import CorruptImageWarning, collate_skip_corrupt
from ..decode import DEFAULT_MAX_PIXELS, Unreadable, decode_image
from .format import INDEX_NAME, ShardInfo, ShardReadWarning, _image_ext, _iter_samples, read_index
from .remote import URL, location, open_shard, read_remote_index

__all__ = ["ShardDataset", "build_shard_loader"]


@contextmanager
def _seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's and Python's global RNGs for one transform call and restore them afterwards, so that with
    ``num_workers=0`` the training loop's own random stream is left untouched."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


class _WindowShuffle:
    """The order a shuffle buffer of ``size`` emits positions ``0..n-1`` in, computed from positions alone.

    Keeping the buffer's logic apart from the bytes is what makes a mid-epoch resume cheap: advancing this
    object past the first ``k`` outputs says which positions are still buffered (``buffer``) and which are not
    yet read (``>= next_unread``), so the reader fetches just those and skips the rest by their tar headers."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        self.n, self.size = n, max(1, size)
        self.rng = random.Random(seed)
        self.buffer: list[int] = []
        self.next_unread = 0

    def __iter__(self) -> _WindowShuffle:
        return self

    def __next__(self) -> int:
        while self.next_unread < self.n and len(self.buffer) < self.size:
            self.buffer.append(self.next_unread)
            self.next_unread += 1
        if not self.buffer:
            raise StopIteration
        i = self.rng.randrange(len(self.buffer))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()


def _first_samples(shards: list[ShardInfo], n: int) -> list[ShardInfo]:
    """The shards that hold the first ``n`` samples in index order, the last one cut short (``limit``)."""
    out = []
    for s in shards:
        if n <= 0:
            break
        out.append(s if s.count <= n else replace(s, count=n))
        n -= s.count
    return out


class _Record(NamedTuple):
    pos: int  # position in this worker's range
    where: str  # "shard.tar:KEY", for warnings
    data: bytes | None  # image bytes; None: the sample could not be read (already warned about)
    label: int


class ShardDataset(IterableDataset):
    """``(image, label)`` samples streamed from tar shards (see :mod:`ijepa.data.shards` for the layout).

    ``shards_dir_or_glob``: a folder written by :func:`write_shards` (or indexed by :func:`write_index`), its
    ``index.json``, or a glob selecting some of its shards; any of them may be a URL (``s3://``, ``gs://``,
    ``http(s)://``: :mod:`.remote`). Images are decoded into PIL mode ``mode`` and passed
    through ``transform``; the label is the ``.cls`` value, or -1 when a sample has none. ``limit`` keeps only
    the first ``limit`` samples in index order (shards in index order, samples in tar order; ``data.limit``).
    ``max_pixels``: an image with more pixels (``data.max_image_pixels``) is skipped from its header, as the folder
    readers do (``None``: no limit). A sample that cannot be decoded is yielded as ``None`` (warned about once per
    process, naming ``shard:KEY``) so
    :func:`~ijepa.data.datasets.collate_skip_corrupt` counts it. A truncated or unreadable shard is not fatal:
    its samples that cannot be read are yielded as ``None`` too, with one :class:`ShardReadWarning` — so the
    number of items per epoch never changes, which keeps DDP ranks in step. A store that stays unreachable through
    its retries stops the epoch instead (:class:`~.remote.RemoteStoreError`, naming the shard).

    How an epoch is split: the shards are put in an order seeded by ``seed + epoch`` (index order with
    ``shuffle=False``) and their samples concatenated; rank ``rank`` takes the contiguous range
    ``[rank·Q, rank·Q + len)`` with ``Q = total // world_size``. So ranks read disjoint samples — disjoint shards
    except the (at most two) boundary shards a rank shares with its neighbours, each reading its own part —
    every rank yields the same count, and the ``total % world_size`` samples past the last rank are left out,
    different ones each epoch. Within a DataLoader, each worker (``get_worker_info()``) takes a contiguous part
    of its rank's range and reads it through a seeded shuffle buffer of ``shuffle_buffer`` samples (its memory
    cost: that many encoded images per worker). Each transform call is seeded from ``(seed, epoch, position
    in the epoch)``, so augmentations do not depend on which worker produces a sample.

    ``batch_size``: set it (or use :func:`build_shard_loader`, which does) to the DataLoader's batch size. Then
    each rank's range is cut to whole batches and split among workers in whole batches, so ``len(loader)`` is
    exact, no worker yields a partial batch, and :meth:`set_start` can resume mid-epoch exactly. Without it
    ``len()`` counts samples (``total // world_size``) and with several workers the DataLoader may yield a
    partial batch per worker.

    Call :meth:`set_epoch` (and :meth:`set_start` when resuming) before each pass; DataLoader workers copy the
    dataset when an iterator is created, so ``persistent_workers`` would not see the new epoch — do not use it.
    An exact resume needs the same shards, ``world_size``, ``seed``, ``batch_size``, ``shuffle_buffer`` and
    number of workers as the interrupted run.
    """

    def __init__(self, shards_dir_or_glob: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle_buffer: int = 1000,
                 shuffle: bool = True, batch_size: int | None = None, mode: str = "RGB",
                 limit: int | None = None, name_skipped: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got world_size={world_size}, "
                             f"rank={rank}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        spec = location(shards_dir_or_glob)
        self.index, self.shards, self.classes = (read_remote_index if isinstance(spec, URL) else read_index)(spec)
        if limit is not None:
            self.shards = _first_samples(self.shards, limit)
        self.root = self.shards[0].path.parent
        self.num_samples = sum(s.count for s in self.shards)
        self.labelled = bool(self.index.get("labelled"))
        self.transform = transform
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.batch_size = batch_size
        self.mode = mode
        self.max_pixels = max_pixels
        # True: an unusable sample comes as an Unreadable naming it (shard:key), for a per-file tally of skips
        self.name_skipped = name_skipped
        self.epoch = 0
        self.start = 0  # batches of this rank's epoch already consumed (set_start)
        # Per process, like the folder datasets: each worker may warn once about the same sample.
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.root)!r}, shards={len(self.shards)}, samples={self.num_samples}, "
                f"rank={self.rank}/{self.world_size}, batch_size={self.batch_size})")

    # -- epoch geometry --------------------------------------------------------------------------------------

    @property
    def samples_per_rank(self) -> int:
        """Samples every rank yields in a whole epoch (whole batches when ``batch_size`` is set)."""
        q = self.num_samples // self.world_size
        return q - q % self.batch_size if self.batch_size else q

    def __len__(self) -> int:
        """Samples this rank still yields this epoch: exact, the same on every rank."""
        done = self.start * (self.batch_size or 0)
        return max(0, self.samples_per_rank - done)

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order and shuffles of ``epoch`` and restart at its beginning."""
        self.epoch = epoch
        self.start = 0

    def set_start(self, batch_index: int, batch_size: int) -> None:
        """Skip the first ``batch_index`` batches of this rank's epoch (call after :meth:`set_epoch`).

        Skipped samples are not decoded, and skipped tar members cost only a header read."""
        if batch_index < 0 or batch_size < 1:
            raise ValueError(f"need batch_index >= 0 and batch_size >= 1, got {batch_index}, {batch_size}")
        if self.batch_size != batch_size:
            raise ValueError(f"set_start(batch_size={batch_size}) but the dataset was built with batch_size="
                             f"{self.batch_size}: an exact resume needs the worker split in whole batches of the "
                             "loader's size, so pass batch_size= (or use build_shard_loader)")
        self.start = batch_index

    def epoch_order(self, epoch: int | None = None) -> list[int]:
        """Indices into :attr:`shards` in the order of ``epoch`` (default: the current one), the same on all ranks."""
        n = len(self.shards)
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        return torch.randperm(n, generator=g).tolist()

    def _pieces(self, lo: int, hi: int) -> list[tuple[ShardInfo, int, int]]:
        """``(shard, first, stop)`` sample ranges covering positions ``[lo, hi)`` of the epoch's stream."""
        order = self.epoch_order()
        counts = [self.shards[i].count for i in order]
        ends = list(itertools.accumulate(counts))
        out = []
        i = bisect.bisect_right(ends, lo)
        while lo < hi and i < len(order):
            begin = ends[i] - counts[i]
            s0, s1 = lo - begin, min(hi, ends[i]) - begin
            if s1 > s0:
                out.append((self.shards[order[i]], s0, s1))
            lo, i = begin + s1, i + 1
        return out

    def plan(self, rank: int | None = None) -> list[tuple[str, int, int]]:
        """``(shard name, first sample, stop)`` ranges ``rank`` (default: this one) reads in the current epoch."""
        r = self.rank if rank is None else rank
        q = self.num_samples // self.world_size
        return [(s.name, a, b) for s, a, b in self._pieces(r * q, r * q + self.samples_per_rank)]

    def _worker_range(self, worker: int, n_workers: int) -> tuple[int, int, int, int]:
        """``(logical worker, first, count, skip)`` in rank coordinates for DataLoader worker ``worker``.

        With a batch size, logical worker ``l`` owns the rank's batches ``b`` with ``b % n_workers == l`` (the
        DataLoader takes batches from its workers round-robin, starting at worker 0). After ``set_start(k)``
        worker ``w`` plays logical worker ``(w + k) % n_workers``, so the first batch the loader returns is
        batch ``k`` — exactly the one the interrupted run would have returned next."""
        W = n_workers
        if not self.batch_size:
            q = self.samples_per_rank
            sizes = [q // W + (lw < q % W) for lw in range(W)]
            return worker, sum(sizes[:worker]), sizes[worker], 0
        B, k = self.batch_size, self.start
        nb = self.samples_per_rank // B
        lw = (worker + k) % W
        batches = [nb // W + (i < nb % W) for i in range(W)]
        skip = min(batches[lw], (k - lw + W - 1) // W) if k > lw else 0
        return lw, B * sum(batches[:lw]), B * batches[lw], B * skip

    # -- reading ---------------------------------------------------------------------------------------------

    def _read_piece(self, shard: ShardInfo, s0: int, s1: int, base: int, need: Callable[[int], bool]
                    ) -> Iterator[_Record]:
        """A record for every needed sample ``j`` in ``[s0, s1)`` of ``shard`` (position ``base + j - s0``):
        read, or with ``data=None`` when the shard ends early or cannot be read."""
        last = s0 - 1
        problem = None
        try:
            # a stream (http) is read front to back; a file or an object store skips unwanted members' bytes
            with open_shard(shard) as f, tarfile.open(fileobj=f, mode="r:" if f.seekable() else "r|") as tar:
                wanted = lambda j: s0 <= j < s1 and need(base + j - s0)
                for j, key, files in _iter_samples(tar, wanted, stop=s1):
                    last = j
                    yield self._record(base + j - s0, f"{shard.name}:{key}", files)
        except (OSError, EOFError, tarfile.TarError) as e:
            problem = f"cannot be read after sample {last + 1} ({type(e).__name__}: {e})"
        lost = [j for j in range(last + 1, s1) if need(base + j - s0)]
        if lost:
            if problem is None:
                problem = f"ends before sample {s1} although {INDEX_NAME} says it holds {shard.count}"
            if shard.name not in self._warned:
                self._warned.add(shard.name)
                warnings.warn(f"Shard {shard.path} {problem}: {len(lost)} sample(s) yielded as None (counted as "
                              "corrupt). Re-create it with `ijepa shards`.", ShardReadWarning, stacklevel=2)
            for j in lost:
                yield _Record(base + j - s0, f"{shard.name}:#{j}", None, -1)

    def _record(self, pos: int, where: str, files: dict[str, bytes]) -> _Record:
        ext = _image_ext(files)
        label = -1
        problem = None if ext else "no image member"
        if "cls" in files:
            try:
                label = int(files["cls"].decode().strip())
            except ValueError:
                problem = f"label {files['cls'][:20]!r} is not an integer"
        elif self.labelled and problem is None:
            # In a labelled set this is the last sample of a truncated shard, or a broken writer: a wrong label
            # (-1) would be worse than a skipped sample.
            problem = "no .cls label member"
        if problem is not None:
            self._warn(where, problem)
            return _Record(pos, where, None, -1)
        return _Record(pos, where, files[ext], label)

    def _warn(self, where: str, problem: str) -> None:
        if where not in self._warned:
            self._warned.add(where)
            warnings.warn(f"Skipping unreadable sample {self.root / where}: {problem}", CorruptImageWarning,
                          stacklevel=3)

    def _skip(self, where: str, reason: str) -> Unreadable | None:
        return Unreadable(where, reason) if self.name_skipped else None

    def _decode(self, rec: _Record, epoch_pos: int) -> tuple[Any, int] | Unreadable | None:
        if rec.data is None:
            return self._skip(rec.where, "no usable image member (see the warning)")
        img = decode_image(io.BytesIO(rec.data), self.mode, source=rec.where, max_pixels=self.max_pixels)
        if isinstance(img, Unreadable):
            self._warn(rec.where, img.reason)
            return self._skip(rec.where, img.reason)
        if self.transform is not None:
            with _seeded_rng(stream_seed("shard_sample", self.seed, self.epoch, epoch_pos)):
                img = self.transform(img)
        return img, rec.label

    def __iter__(self) -> Iterator[tuple[Any, int] | None]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        lw, first, count, skip = self._worker_range(worker, n_workers)
        if count - skip <= 0:
            return
        lo = self.rank * (self.num_samples // self.world_size) + first  # this worker's range in the epoch stream
        size = self.shuffle_buffer if self.shuffle else 0
        order = _WindowShuffle(count, size, stream_seed("shard_shuffle", self.seed, self.epoch, self.rank, lw))
        for _ in range(skip):
            next(order)
        unread, buffered = order.next_unread, set(order.buffer)
        need = lambda p: p >= unread or p in buffered

        def records() -> Iterator[_Record]:
            base = 0
            for shard, s0, s1 in self._pieces(lo, lo + count):
                yield from self._read_piece(shard, s0, s1, base, need)
                base += s1 - s0

        reader = records()
        pending: dict[int, _Record] = {}
        try:
            for p in order:
                while p not in pending:
                    rec = next(reader)
                    pending[rec.pos] = rec
                yield self._decode(pending.pop(p), lo + p)
        finally:
            reader.close()


def build_shard_loader(dataset: ShardDataset, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False,
                       prefetch_factor: int | None = None) -> DataLoader:
    """A DataLoader over ``dataset`` with :func:`~ijepa.data.datasets.collate_skip_corrupt` (batches are
    ``(images, labels, n_skipped)``), after setting ``dataset.batch_size`` so ``len(loader)`` is exact and
    :meth:`ShardDataset.set_start` resumes exactly. Workers are not persistent (see :class:`ShardDataset`)."""
    if dataset.batch_size not in (None, batch_size):
        raise ValueError(f"dataset was built with batch_size={dataset.batch_size}, loader asks for {batch_size}")
    dataset.batch_size = batch_size
    kw: dict[str, Any] = {} if prefetch_factor is None or num_workers == 0 else {"prefetch_factor": prefetch_factor}
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_corrupt,
                      pin_memory=pin_memory, drop_last=False, **kw)
