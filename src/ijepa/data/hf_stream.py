"""A Hugging Face split read as a stream (``data.streaming: true``): batches for training, resumable mid-epoch.

How the stream is read and split:

- ``hf_shuffle_buffer`` > 0: the stream goes through ``datasets``' seeded shuffle buffer (and its shard order is
  reshuffled every epoch by ``set_epoch``); 0: the stream's own order (shard order still changes per epoch).
- Ranks: ``datasets.distributed.split_dataset_by_node`` with the ``examples`` strategy: rank ``r`` of ``W`` keeps
  examples ``r, r + W, ...`` of the epoch's stream, so no example goes to two ranks and every rank holds at least
  ``rows // W`` of them. Every rank reads the whole stream's bytes; only its own share is decoded.
- Each rank trains on ``rows // W // batch_size`` batches per epoch (the same count on every rank, which keeps DDP in
  step); the fewer than ``batch_size`` examples left at each rank's end are not used that epoch.
- The stream is read in the training process, which only parses rows; ``num_workers`` processes decode and
  augment each batch (a batch ahead of the one training). Each image's crop is seeded from ``(seed, epoch,
  position in the epoch's stream)``, so it does not depend on which process decodes it.

Resume: after every batch handed to training the rank keeps the stream's own ``state_dict()``; the checkpoint
holds every rank's (:meth:`HFStreamPipeline.state_dict`). A resumed run trains on exactly the examples, crops and
batches the uninterrupted run would have, in one of two ways:

- ``hf_shuffle_buffer: 0``: each rank's stream starts where its saved state says (``load_state_dict``), reading
  nothing again. The batch read ahead when the run stopped is read again; nothing is trained on twice or lost.
- with a shuffle buffer, or a checkpoint without the stream's state (written by a run with another number of
  processes): the epoch's stream is read again from its start and the rows of the batches already trained on
  dropped undecoded, at the cost of reading them again. ``datasets`` does not save a shuffle buffer: a stream
  resumed from its state without it would skip the buffered examples for the rest of the epoch and run short of
  the epoch's batches (unevenly across ranks, which DDP cannot have).
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from ..errors import DataError
from ..seeding import stream_seed
from ..spec import InputSpec
from .datasets import CorruptImageWarning, collate_skip_corrupt
from .decode import Unreadable
from .hf import HFSource, decode_value, hf_datasets, open_hf_source
from .sources import Probe, _is_colour, mode_for
from .transforms import make_eval_transform, make_pretrain_transform

if TYPE_CHECKING:
    from ..config_sections import DataConfig

__all__ = ["HFStream", "HFStreamPipeline"]

MONITOR_IMAGES = 256  # the monitoring batch's images at most (LoaderPipeline's too)

# what a decoding process holds: set once per process by _setup, read by _decode_one
_DECODE: dict[str, Any] = {}


def _setup(transform: Callable[[Any], Any] | None, mode: str, max_pixels: int | None) -> None:
    _DECODE.update(transform=transform, mode=mode, max_pixels=max_pixels)


def _decode_one(job: tuple[Any, int, str, int]) -> Any:
    """``(transform(image), label)`` of one row, or an :class:`Unreadable`; the transform seeded from ``seed``,
    the caller's random streams left as they were."""
    value, label, source, seed = job
    img = decode_value(value, _DECODE["mode"], source, max_pixels=_DECODE["max_pixels"])
    if isinstance(img, Unreadable) or _DECODE["transform"] is None:
        return img if isinstance(img, Unreadable) else (img, label)
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            return _DECODE["transform"](img), label
        finally:
            random.setstate(state)


class _InProcess(Executor):
    """``num_workers: 0``: decode in the training process, when the batch is asked for."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def _decode_batch(jobs: list) -> list:
    return [_decode_one(j) for j in jobs]


class HFStream:
    """One rank's share of a streamed split, as batches ``(images, labels, skipped)`` (see the module's doc)."""

    def __init__(self, src: HFSource, transform: Callable[[Any], Any] | None, *, mode: str = "RGB",
                 max_pixels: int | None = None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle_buffer: int = 1000, batch_size: int = 1, num_workers: int = 0) -> None:
        if src.rows is None:
            raise ValueError("HFStream needs the split's number of rows")
        data = src.data
        self.shuffled = bool(shuffle_buffer)
        if shuffle_buffer:
            data = data.shuffle(seed=seed, buffer_size=shuffle_buffer)
        # always a dataset of its own (for one process too): its epoch and state are not those of ``src.data``,
        # which the first images (the probe, the monitoring batch) are read from
        hf_datasets()  # the package, or the line naming its extra
        from datasets.distributed import split_dataset_by_node

        data = split_dataset_by_node(data, rank, world_size, strategy="examples")
        self.data, self.src = data, src
        self.transform, self.mode, self.max_pixels = transform, mode, max_pixels
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.steps = src.rows // world_size // batch_size
        self.state: dict[str, Any] | None = None  # after the last batch handed out: {"epoch", "batch", "hf"}
        self.resume: dict[str, Any] | None = None  # a checkpoint's state, used by the epoch and batch it names
        self._warned: set[str] = set()

    def _jobs(self, rows: list[dict], epoch: int, first: int) -> list[tuple[Any, int, str, int]]:
        """What decoding needs of each row; ``first``: the rank's position of the first (in its share)."""
        img, lab = self.src.image_column, self.src.label_column
        jobs = []
        for k, row in enumerate(rows):
            q = (first + k) * self.world_size + self.rank  # the example's position in the epoch's stream
            label = row.get(lab) if lab else None
            value = row[img]
            # named by its file where the row has one, else by where it is in this epoch's stream
            named = value.get("path") if isinstance(value, dict) else None
            jobs.append((value, -1 if label is None else int(label), named or f"{self.src.split}:epoch{epoch}#{q}",
                         stream_seed("image_transform", self.seed, epoch, q)))
        return jobs

    def _start(self, epoch: int, start: int) -> Iterator[dict]:
        """The rank's rows of ``epoch`` from batch ``start``: from the checkpoint's stream state where it is this
        very point and the stream has no shuffle buffer, else read from the epoch's start and the first ``start``
        batches' rows dropped undecoded. (``datasets`` does not save a shuffle buffer: a stream resumed without it
        would go on with later examples and run short of the epoch's batches, and under DDP unevenly.)"""
        self.data.set_epoch(epoch)
        r, self.resume = self.resume, None
        exact = (r is not None and r.get("epoch") == epoch and r.get("batch") == start and start > 0
                 and not self.shuffled)
        self.data.load_state_dict(r["hf"] if exact else None)
        rows = iter(self.data)
        if start and not exact:
            for _ in itertools.islice(rows, start * self.batch_size):
                pass
        return rows

    def _pool(self) -> Executor:
        if self.num_workers == 0:
            return _InProcess()
        _setup(self.transform, self.mode, self.max_pixels)  # the forked processes inherit it
        return ProcessPoolExecutor(self.num_workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_setup, initargs=(self.transform, self.mode, self.max_pixels))

    def _warn(self, items: list) -> None:
        """A warning per unusable image, once per process, as the folder readers give (here, not in the decoding
        processes, whose warnings would not reach the run)."""
        for it in items:
            if isinstance(it, Unreadable) and it.source not in self._warned:
                self._warned.add(it.source)
                warnings.warn(f"Skipping unreadable image {self.src.where} {it.source}: {it.reason}",
                              CorruptImageWarning, stacklevel=3)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Any, Any, list]]:
        """Batches ``start`` to :attr:`steps` - 1 of ``epoch``, collated by
        :func:`~ijepa.data.datasets.collate_skip_corrupt`; :attr:`state` follows the batches handed out."""
        _setup(self.transform, self.mode, self.max_pixels)
        rows = self._start(epoch, start)
        B, W = self.batch_size, max(1, self.num_workers)
        pending: deque[tuple[list[Future], dict]] = deque()
        with self._pool() as pool:
            b_read = start
            while True:
                while len(pending) < 2 and b_read < self.steps:  # this batch and the next one decoding
                    chunk = list(itertools.islice(rows, B))
                    if len(chunk) < B:
                        raise DataError(f"{self.src.where}: the stream ended after {b_read * B + len(chunk)} of "
                                        f"this rank's {self.steps * B} examples (its row count was wrong?)")
                    jobs = self._jobs(chunk, epoch, b_read * B)
                    parts = [jobs[i::W] for i in range(W)] if self.num_workers else [jobs]
                    futures = [pool.submit(_decode_batch, p) for p in parts]
                    b_read += 1
                    pending.append((futures, {"epoch": epoch, "batch": b_read, "hf": self.data.state_dict()}))
                if not pending:
                    return
                futures, state = pending.popleft()
                done = [f.result() for f in futures]
                items = [None] * B
                for i, part in enumerate(done):  # undo the round-robin split over the processes
                    items[i::len(done)] = part
                self._warn(items)
                self.state = state
                yield collate_skip_corrupt(items)


class HFStreamPipeline:
    """The training pipeline of a streamed split: the interface of ``ijepa.train.inputs.LoaderPipeline``
    (``steps_per_epoch``, ``input_spec``, ``epoch``, ``monitor_batch``, ``knn_sets``) plus :meth:`state_dict`
    and :meth:`load_state_dict`, which the checkpoint keeps."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int, seed: int, device: torch.device,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.cfg, self.device, self.rank, self.world_size = cfg, device, rank, world_size
        src = open_hf_source(cfg.hf_path, split=cfg.split, name=cfg.hf_name, image_column=cfg.image_column,
                             label_column=cfg.label_column, streaming=True)
        if src.rows is None:
            src.rows = _count_rows(src)
        if cfg.limit:
            src.data, src.rows = src.data.take(cfg.limit), min(src.rows, cfg.limit)
        self.where, self.src = src.where, src
        transform = make_pretrain_transform(
            crop_size=cfg.crop_size, crop_scale=cfg.crop_scale, horizontal_flip=cfg.use_horizontal_flip,
            color_distortion=cfg.use_color_distortion, color_jitter_strength=cfg.color_jitter_strength,
            gaussian_blur=cfg.use_gaussian_blur, mean=mean, std=std, in_chans=cfg.in_chans)
        self.stream = HFStream(src, transform, mode=mode_for(cfg.in_chans), max_pixels=cfg.max_image_pixels,
                               rank=rank, world_size=world_size, seed=seed, shuffle_buffer=cfg.hf_shuffle_buffer,
                               batch_size=cfg.batch_size, num_workers=cfg.num_workers)
        if self.stream.steps == 0:
            raise DataError(f"{src.where}: {src.rows} images are fewer than one batch of {cfg.batch_size} per process "
                            f"× {world_size} process(es): lower data.batch_size or add images")
        self.eval_tf = make_eval_transform(cfg.crop_size, mean, std, in_chans=cfg.in_chans)
        self.input_spec = InputSpec(cfg.crop_size, cfg.in_chans, mean, std)
        # the first images, undecoded, read once for the probe and the monitoring batch (every pass over a stream
        # costs a start and, for some sources, a pause at its end)
        self._head = [row[src.image_column] for row in itertools.islice(iter(src.data), MONITOR_IMAGES)]
        self.probe = self._probe()

    @property
    def steps_per_epoch(self) -> int:
        return self.stream.steps

    def _first(self, n: int, mode: str, transform: Callable[[Any], Any] | None, draft: int | None) -> Iterator[Any]:
        """The first ``n`` images of the split in its own order (the same on every rank), decoded."""
        for i, value in enumerate(self._head[:n]):
            img = decode_value(value, mode, f"{self.src.split}:{i}", max_pixels=self.cfg.max_image_pixels,
                               draft_size=draft)
            yield img if isinstance(img, Unreadable) or transform is None else transform(img)

    def _probe(self, n: int = 16) -> Probe:
        tried = readable = 0
        colour, problem = False, None
        for img in self._first(max(n, 64), "RGB", None, 64):
            tried += 1
            if isinstance(img, Unreadable):
                problem = problem or f"{img.source}: {img.reason}"
                continue
            readable, colour = readable + 1, colour or _is_colour(img)
            if readable >= n:
                break
        if readable == 0:
            raise DataError(f"{self.where}: none of its first {tried} images can be read (first: {problem})")
        return Probe(self.src.rows, tried, readable, colour, problem)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor | None, list]]:
        for images, _, skipped in self.stream.batches(epoch, start):
            yield (None if images is None else images.to(self.device, non_blocking=True)), skipped

    def knn_sets(self) -> None:
        return None

    def monitor_batch(self, n: int = MONITOR_IMAGES) -> torch.Tensor:
        """The first ``n`` readable images of the split, not augmented (unreadable ones are left out here and
        counted when training meets them)."""
        imgs = [x for x in self._first(n, mode_for(self.cfg.in_chans), self.eval_tf, None)
                if not isinstance(x, Unreadable)]
        if not imgs:
            raise DataError(f"{self.where}: none of its first {n} images can be read")
        return torch.stack(imgs).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Every rank's stream state (a collective call under DDP: every rank calls it, as every rank saves)."""
        mine = self.stream.state
        states = [mine]
        if self.world_size > 1 and torch.distributed.is_initialized():
            states = [None] * self.world_size
            torch.distributed.all_gather_object(states, mine)
        return {"kind": "hf_stream", "world_size": self.world_size, "ranks": states}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Start this rank's stream where ``state`` (from :meth:`state_dict`) left it; ``None`` or a state of
        another number of processes: the epoch is read again from its start instead (see the module's doc)."""
        ok = state is not None and state.get("kind") == "hf_stream" and state.get("world_size") == self.world_size
        self.stream.resume = state["ranks"][self.rank] if ok else None


def _count_rows(src: HFSource) -> int:
    """The rows of a stream whose size its metadata does not give: counted by reading one column (local files);
    a Hub dataset without split sizes is refused rather than downloaded to count it."""
    if not src.local:
        raise DataError(f"{src.where}: its number of rows is not in its metadata, and a stream's epoch needs it: "
                        "read it map-style (data.streaming=false)")
    col = src.label_column or src.image_column
    return sum(1 for _ in src.data.select_columns([col]))
