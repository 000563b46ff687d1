"""Seeds for every random stream of a run, from a stream's name and integers (seed, rank, epoch, step, index).

Every draw is seeded from where it happens, never from a running generator, so a resumed run sees exactly the
images, crops and masks the uninterrupted run would have seen. Each stream has its own tag, so two streams
never share a generator: without one, the masks of step ``s`` (seed, rank, s) and the crops of batch 1 of epoch
``s`` (seed, rank, s, 1) would draw the same numbers.
"""

from __future__ import annotations

import torch

# The tags are integers because Python hashes ints identically in every process (strings are salted per
# process); the names are what code says. Never renumber: the numbers are part of every run's random streams.
STREAMS = {"crop": 1, "mask": 2, "gpu_augment": 3, "image_transform": 4, "shard_sample": 5, "shard_shuffle": 6}

__all__ = ["STREAMS", "generator_for", "seed_for", "stream_seed"]


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers, the same in every process and on every machine."""
    return hash(tuple(int(p) for p in parts)) & (2**63 - 1)


def stream_seed(stream: str, *parts: int) -> int:
    """The seed of ``stream`` (a name in :data:`STREAMS`) at ``parts``."""
    try:
        tag = STREAMS[stream]
    except KeyError:
        raise ValueError(f"unknown random stream {stream!r} (known: {', '.join(STREAMS)})") from None
    return seed_for(tag, *parts)


def generator_for(stream: str, *parts: int) -> torch.Generator:
    """A CPU generator for ``stream`` at ``parts`` (e.g. ``generator_for("mask", seed, rank, step)``)."""
    return torch.Generator().manual_seed(stream_seed(stream, *parts))
