"""Batch iteration with exact mid-epoch resume: a distributed sampler that can skip the batches a
checkpointed run already consumed, a DataLoader built on it, and a worker-free in-memory equivalent.

The order of an epoch depends only on ``(seed, epoch, rank, world_size)``, so after restoring a
checkpoint taken after batch ``k`` of epoch ``e``, ``set_epoch(e); set_start(k, batch_size)`` yields
exactly the batches an uninterrupted run would have seen next.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .datasets import collate_skip_corrupt


class ResumableDistributedSampler(Sampler[int]):
    """Like :class:`torch.utils.data.distributed.DistributedSampler`, plus :meth:`set_start`.

    Every rank takes the strided slice ``perm[rank::num_replicas]`` of one permutation seeded with
    ``seed + epoch`` (identical to DistributedSampler's, so the two yield the same indices when no
    start is set). ``drop_last=True`` trims the permutation to a multiple of ``num_replicas``;
    ``False`` pads it by wrapping around, so some samples appear twice in the epoch.

    :meth:`set_epoch` resets the start to 0, so call :meth:`set_start` after it.
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True) -> None:
        if dataset_len < 0:
            raise ValueError(f"dataset_len must be >= 0, got {dataset_len}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got "
                             f"num_replicas={num_replicas}, rank={rank}")
        self.dataset_len = dataset_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        if drop_last:
            self.num_samples = dataset_len // num_replicas
        else:
            self.num_samples = math.ceil(dataset_len / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` and restart at its beginning."""
        self.epoch = epoch
        self.start = 0

    def set_start(self, batch_index: int, batch_size: int) -> None:
        """Skip the first ``batch_index`` batches of ``batch_size`` of this rank's slice of the epoch."""
        if batch_index < 0 or batch_size < 1:
            raise ValueError(f"need batch_index >= 0 and batch_size >= 1, got {batch_index}, {batch_size}")
        self.start = batch_index * batch_size

    def epoch_indices(self) -> torch.Tensor:
        """This rank's whole slice of the current epoch (ignoring the start), int64 ``(num_samples,)``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.dataset_len, generator=g)
        else:
            perm = torch.arange(self.dataset_len)
        if self.total_size <= self.dataset_len:
            perm = perm[: self.total_size]
        elif self.dataset_len > 0:
            reps = math.ceil(self.total_size / self.dataset_len)
            perm = perm.repeat(reps)[: self.total_size]
        return perm[self.rank: self.total_size: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def build_loader(dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False,
                 drop_last: bool = True, shuffle: bool = True
                 ) -> tuple[DataLoader, ResumableDistributedSampler]:
    """DataLoader over ``dataset`` with a :class:`ResumableDistributedSampler` and
    :func:`~ijepa.data.datasets.collate_skip_corrupt`, so batches are ``(images, labels, skipped)``.

    Call ``sampler.set_epoch(e)`` (and ``sampler.set_start(k, batch_size)`` when resuming) before
    iterating. ``len(loader)`` counts only the batches left after the start.
    """
    sampler = ResumableDistributedSampler(len(dataset), num_replicas=world_size, rank=rank,
                                          shuffle=shuffle, seed=seed, drop_last=drop_last)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skip_corrupt,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # DataLoader refuses persistent_workers without workers; treat it as "keep them if any".
        persistent_workers=persistent_workers and num_workers > 0,
    )
    return loader, sampler


class InMemoryBatches:
    """Batches ``(uint8 images (B, C, H, W), int64 labels (B,))`` cut by indexing in-memory tensors.

    The worker-free fast path for datasets that fit in memory (Fashion-MNIST is 47 MB): no
    DataLoader, no processes, no per-image Python. The order is that of a
    :class:`ResumableDistributedSampler` with the same arguments, with the same
    :meth:`set_epoch` / :meth:`set_start` API. The tensors may live on the GPU; batches are then cut
    there. ``len()`` is the number of batches left in this pass (all of them unless a start is set);
    :attr:`batches_per_epoch` is the full count.
    """

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor | Sequence[int] | None,
                 batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True, shuffle: bool = True) -> None:
        if images_uint8.ndim == 3:
            images_uint8 = images_uint8.unsqueeze(1)
        if images_uint8.ndim != 4:
            raise ValueError(f"expected images (N, H, W) or (N, C, H, W), got {tuple(images_uint8.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = images_uint8.shape[0]
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.int64, device=images_uint8.device)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (n,):
            raise ValueError(f"{n} images but labels of shape {tuple(labels.shape)}")
        self.images = images_uint8
        self.labels = labels
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = ResumableDistributedSampler(n, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                                   seed=seed, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_start(self, batch_index: int, batch_size: int | None = None) -> None:
        """Skip the first ``batch_index`` batches (``batch_size`` defaults to this iterator's)."""
        self.sampler.set_start(batch_index, self.batch_size if batch_size is None else batch_size)

    def _n_batches(self, n_samples: int) -> int:
        return n_samples // self.batch_size if self.drop_last else math.ceil(n_samples / self.batch_size)

    @property
    def batches_per_epoch(self) -> int:
        return self._n_batches(self.sampler.num_samples)

    def __len__(self) -> int:
        return self._n_batches(len(self.sampler))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.sampler.epoch_indices()[self.sampler.start:]
        img_idx = idx.to(self.images.device)
        lbl_idx = idx.to(self.labels.device)
        bs = self.batch_size
        for i in range(len(self)):
            sl = slice(i * bs, (i + 1) * bs)
            yield self.images.index_select(0, img_idx[sl]), self.labels.index_select(0, lbl_idx[sl])
