"""A run folder one can trust: one process writes it, a resume notices a changed config, a full disk is one line.

- **One owner.** ``ijepa train`` holds an advisory lock (``fcntl.flock``) on ``<out>/.lock`` for the run's life;
  the file names the owner (pid, host, start time). A second run into the same folder stops with an error naming
  it. The kernel releases a flock when its process dies, however it dies, so a lock file that exists but is not
  locked was left by a run that could not remove it (killed, or its machine went down): it is taken over, with a
  line saying so. Under DDP rank 0 holds the lock and every rank stops when it could not take it.
- **A changed config is noticed.** A resume compares the resolved config with the one the checkpoint was written
  with. A changed key that alters what the run computes is refused, naming each key, old -> new, unless
  ``meta.allow_config_change`` (``ijepa train --allow-config-change``); then the run goes on with the new values,
  ``config.yaml`` holds the new config and ``config_changes.jsonl`` gets a line with the step and every changed
  key's old and new value, so the settings the run started with are never lost.
- **Disk full.** No space left while the run writes is one ``DiskFullError`` naming the file;
  the writes are atomic (``ijepa.io``), so the checkpoint before it is intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import ConfigChangedError, DiskFullError, RunFolderInUseError
from ..io import atomic_write_text
from . import distributed as D

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, the folder is not guarded
    fcntl = None

__all__ = ["HISTORY", "LOCK", "RUN_NEUTRAL", "config_change", "no_space", "own_run_folder", "record_config_change"]

LOCK = ".lock"
HISTORY = "config_changes.jsonl"

# The lock descriptors this process holds. A process it forks (a loader worker) closes its copies at once: a flock
# belongs to every copy of its descriptor, so otherwise a killed run's workers would hold the folder until they
# noticed and ended, and a run restarted at once (torchrun --max-restarts) would find it in use.
_HELD: set[int] = set()


def _close_held() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held)

# Keys a resume may change freely: how and where the same computation runs (threads, device, compiled or not,
# activation checkpointing, denormal flushing, loader processes), what is written (logging.*), where the run
# resumes from, and optimization.max_steps, which stops a run early by design, its schedules unchanged.
# A key ending in "." stands for its whole section.
RUN_NEUTRAL = ("logging.", "meta.threads", "meta.device", "meta.compile", "meta.grad_checkpointing",
               "meta.flush_denormal", "meta.load_checkpoint", "meta.read_checkpoint", "meta.allow_config_change",
               "data.num_workers", "data.pin_mem", "optimization.max_steps")


# ------------------------------------------------------------------------------------------------ disk full


@contextlib.contextmanager
def no_space(path: Path, latest: Path | None = None) -> Iterator[None]:
    """Inside, running out of space (or quota) while writing ``path`` is a ``DiskFullError`` saying what is
    intact: ``latest``, the run's checkpoint, which atomic writes never leave torn."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if latest is None:
            kept = "nothing the run wrote before was touched"
        else:
            kept = f"the last checkpoint, {latest}, is intact" if latest.exists() else "no checkpoint was written yet"
        raise DiskFullError(f"no space left on the device writing {path}: {kept}; free some space and run the same "
                            "command again to resume") from None


# ------------------------------------------------------------------------------------------------ the lock


def _owner(fd: int) -> str:
    """Who the lock file says holds it: 'pid N on host H since T'."""
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    try:
        o = json.loads(raw)
        return f"pid {o['pid']} on host {o['host']} since {o['since']}"
    except (ValueError, KeyError, TypeError):
        return f"a process that wrote {raw!r}" if raw else ""


def _lock(path: Path) -> int | None:
    """The locked file's descriptor, or None where the filesystem has no locks (a line says the folder is not
    guarded). Retries when the file it locked was removed meanwhile (its owner ended between the two calls)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd) or "another process (it has not written its name yet)"
            os.close(fd)
            raise RunFolderInUseError(f"{path.parent} is in use by {owner}: another `ijepa train` writes there; "
                                      "wait for it to end, stop it, or give another --out") from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP: some network filesystems
            os.close(fd)
            print(f"{path.parent}: cannot lock {path.name} ({os.strerror(e.errno)}): nothing stops a second run "
                  "from writing the same folder", flush=True)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def _hold(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` for the block, writing this process's name in it; remove it at the end (and ``out``,
    when this made it and nothing else was written: a run that stopped before any work leaves nothing)."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fd = _lock(path) if fcntl is not None else None
    if fd is None:
        yield
        return
    _HELD.add(fd)
    try:
        previous = _owner(fd)
        if previous:
            print(f"{out}: taking over the run folder from {previous}: its lock file was there but nothing held the "
                  "lock, so that run ended without releasing it (killed, or its machine went down)", flush=True)
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}) + "\n"
        with no_space(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the release: a lock file that outlives its owner means the owner died
        _HELD.discard(fd)
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                out.rmdir()


@contextlib.contextmanager
def own_run_folder(out: Path, dist: D.DistInfo, device: torch.device) -> Iterator[None]:
    """Rank 0 holds the run folder's lock for the block. Every rank learns whether it could, so none goes on to
    wait for a rank 0 that stopped."""
    with contextlib.ExitStack() as stack:
        refused = None
        if dist.is_main:
            try:
                stack.enter_context(_hold(Path(out)))
            except RunFolderInUseError as e:
                refused = e
        if D.slowest(1.0 if refused else 0.0, device) > 0:
            raise refused or RunFolderInUseError(f"{out} is in use by another run: rank 0 could not lock it")
        yield


# ------------------------------------------------------------------------------------------------ config changes


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _neutral(key: str) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in RUN_NEUTRAL)


def config_change(before: dict | None, cfg: Config, step: int, checkpoint: Path) -> dict | None:
    """What changed between ``before`` (the config a checkpoint at ``step`` was written with) and ``cfg``: None
    when nothing did, else the entry ``record_config_change`` writes. A key that alters the run is a
    ``ConfigChangedError`` unless ``cfg.meta.allow_config_change``. A key ``before`` lacks (the checkpoint is
    older than the key) had its default."""
    if not before:  # a checkpoint without its config: nothing to compare
        return None
    was, now, default = _flat(before), _flat(cfg.to_dict()), _flat(Config().to_dict())
    changes = {k: {"old": was.get(k, default.get(k)), "new": v} for k, v in now.items()
               if was.get(k, default.get(k)) != v}
    alters = [k for k in changes if not _neutral(k)]
    if alters and not cfg.meta.allow_config_change:
        shown = ", ".join(f"{k} {json.dumps(changes[k]['old'])} -> {json.dumps(changes[k]['new'])}" for k in alters)
        raise ConfigChangedError(
            f"{checkpoint} (step {step}) was written with other values of keys that change the run: {shown}. "
            "Resume with the same values, give another --out, or pass --allow-config-change "
            f"(meta.allow_config_change=true) to go on with the new ones ({HISTORY} records the change)")
    if not changes:
        return None
    return {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "alters_run": alters, "changes": changes}


def record_config_change(out: Path, start_step: int, change: dict | None, latest: Path) -> None:
    """``config_changes.jsonl``: the entries of the steps up to ``start_step`` (a run resumed from an earlier
    checkpoint drops the later ones, as its logs do), then ``change``, unless a start from the same checkpoint
    already recorded it."""
    path = out / HISTORY
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    entries = []
    for line in old.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):  # a line torn by a kill is dropped
            entry = json.loads(line)
            if int(entry["step"]) <= start_step:
                entries.append(entry)
    last = entries[-1] if entries else None
    if change is not None and not (last and last["step"] == change["step"] and last["changes"] == change["changes"]):
        entries.append(change)
    text = "".join(json.dumps(e) + "\n" for e in entries)
    if text == old:
        return
    with no_space(path, latest):
        if text:
            atomic_write_text(path, text)
        else:
            path.unlink()
