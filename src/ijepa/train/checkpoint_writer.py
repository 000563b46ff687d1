"""Checkpoints that the step does not wait for, and checkpoints due by time.

- :func:`snapshot`: a copy of a checkpoint's state in CPU memory, taken on the training thread between two steps
  (the next step changes the weights and optimizer state in place, so the copy must be whole before it runs).
- :class:`BackgroundWriter`: writes such a copy on a thread of its own (``torch.save`` to a temporary file, then
  the atomic rename of ``ijepa.io``), one write in flight at a time: a new one first waits for the one before.
  An error of the write (a full disk) is raised on the training thread at the next :meth:`~BackgroundWriter.wait`.
- :class:`CheckpointTimer`: ``logging.checkpoint_every_minutes``, asked at a cadence every rank shares; rank 0's
  clock decides and every rank follows (one broadcast per ask under DDP, nothing when alone).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BackgroundWriter", "CheckpointTimer", "snapshot"]


def snapshot(obj: Any) -> Any:
    """``obj`` (nested dicts, lists and tuples of tensors and plain values) with every tensor copied to the CPU:
    what the training thread hands to the writer."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Runs one write at a time on a thread; :meth:`wait` joins it and raises what it raised."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[], None]) -> None:
        """Start ``write`` on a thread once the write before it has ended (raising that one's error, if any)."""
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as e:  # noqa: BLE001 - raised on the training thread by wait()
                self._error = e

        # a daemon: a run that dies of an error does not hang on a write; the atomic rename keeps the old file
        self._thread = threading.Thread(target=run, name="ijepa-checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class CheckpointTimer:
    """Whether a checkpoint is due: ``minutes`` of ``clock`` since the last one (of any kind, :meth:`reset`) or
    since the run's start. ``agree`` turns rank 0's answer into every rank's (``distributed.from_main``), so it
    must be asked at the same steps on every rank. ``minutes`` 0 is never due and asks nothing."""

    def __init__(self, minutes: float, clock: Callable[[], float], agree: Callable[[bool], bool] = bool):
        self.seconds, self.clock, self.agree = minutes * 60.0, clock, agree
        self.last = clock()

    def reset(self) -> None:
        self.last = self.clock()

    def due(self) -> bool:
        if not self.seconds:
            return False
        return self.agree(self.clock() - self.last >= self.seconds)
