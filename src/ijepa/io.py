"""Safe reads and atomic writes: the one place that touches files holding weights or run state.

Every write goes to a temporary file in the destination's folder, is flushed and fsynced, then renamed over the
destination, so a crash (even SIGKILL) leaves either the old file or the new one, never a torn one. A folder
that is one output (a transformers export) is filled under a temporary name and renamed into place whole
(:func:`atomic_folder`). A temporary name says which process wrote it (``<pid>@<host>``), so the next write to
the same destination removes what a killed writer left and never what a live one is still writing. Every
pickle is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import tempfile
import time
import zipfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointReadError,
    UnsafeCheckpointError,
    first_line,
)

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_folder", "atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "check_replaceable", "existing", "read_json", "read_safetensors", "read_torch", "remove_stale_temps",
           "save_torch", "write_safetensors"]

# A temporary file or folder whose writer cannot be asked (another machine's, or a name from before writers were
# named) is taken for a dead writer's once nothing in it has changed for this long: a live writer keeps writing.
STALE_AFTER_S = 3600.0


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened (or fsynced)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _writer() -> str:
    """``<pid>@<host>``: who writes a temporary file, so that a later writer can tell a dead one's leftovers."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _temp_folder_name(path: Path) -> Path:
    """A name no other writer holds (it names this process, and 8 random characters) beside ``path``."""
    return path.with_name(f"{path.name}.tmp-{_writer()}-{secrets.token_hex(4)}")


def _temp_names(name: str) -> re.Pattern:
    """The temporary files (``.<name>.<pid>@<host>.<random>.tmp``, or ``.<name>.<random>.tmp`` as written before
    writers were named) and folders (``<name>.tmp-<pid>@<host>-<random>``) of the destination ``name``."""
    n = re.escape(name)
    return re.compile(rf"^(?:\.{n}\.(?:(\d+)@(.*)\.)?[a-z0-9_]{{8}}\.tmp|{n}\.tmp-(\d+)@(.*)-[a-z0-9_]{{8}})$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _last_change(p: Path) -> float:
    try:
        times = [p.stat().st_mtime] + ([e.stat().st_mtime for e in p.iterdir()] if p.is_dir() else [])
    except OSError:  # removed meanwhile (its writer finished): not stale
        return time.time()
    return max(times)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed writers of ``path`` left beside it: those whose writer
    was a process of this machine that no longer runs, and those of any other writer untouched for
    :data:`STALE_AFTER_S`. Returns what was removed. Every atomic write to ``path`` calls this first."""
    path = Path(path)
    pattern = _temp_names(path.name)
    host = socket.gethostname()
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:  # no folder yet: nothing left behind
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None:
            continue
        pid, writer_host = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        p = Path(entry.path)
        if pid is not None and writer_host == host:
            if int(pid) == os.getpid() or _alive(int(pid)):
                continue
        elif time.time() - _last_change(p) < STALE_AFTER_S:
            continue
        _remove(p)
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kw) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it is fsynced and renamed over
    ``path``; on an exception it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer()}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from the group open() lets see it
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_replaceable(path: str | os.PathLike, names: Collection[str], what: str) -> Path:
    """``path`` if :func:`atomic_folder` may replace it: absent, or a folder holding only ``names`` (what a
    ``what`` holds), so that replacing it whole loses nothing else; otherwise a :class:`CheckpointError`."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"{p} exists and is not a folder; a {what} is a folder")
    if p.is_dir():
        other = sorted(e.name for e in p.iterdir() if e.name not in names)
        if other:
            raise CheckpointError(f"{p} holds files that are no part of a {what} ({', '.join(other[:5])}"
                                  f"{', ...' if len(other) > 5 else ''}); the export replaces the whole folder, so "
                                  "write it to a new or empty folder")
    return p


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, names: Collection[str], what: str) -> Iterator[Path]:
    """A new temporary sibling folder of ``path`` to fill; on a clean exit it is fsynced and renamed to ``path``
    (a folder already there, which may hold only ``names``: see :func:`check_replaceable`, is renamed aside first
    and removed), on an exception it is removed and ``path`` is untouched. A reader finds the old folder or the
    new one whole; a kill between the two renames leaves none at ``path``, never a mixed one."""
    path = check_replaceable(path, names, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_folder_name(path)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        _fsync_dir(tmp)
        if path.exists() or path.is_symlink():
            old = _temp_folder_name(path)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)  # the new folder did not go in: the old one goes back
        elif old is not None:
            _remove(old)
        raise
    if old is not None:
        _remove(old)  # the earlier folder (or a link to one: the link goes, what it points to stays)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_open`."""
    import torch  # here, not at the top: torch-free modules (config.py) write their files through this one
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> Path:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata or {}))
    return atomic_write_bytes(path, data)


def existing(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """``path`` (``~`` expanded) if it exists, else :class:`CheckpointNotFoundError` naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointNotFoundError(f"no {what} at {p}: the path does not exist")
    return p


def read_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` — never anything else — and errors that name the file.

    Zip-format files are memory-mapped, so reading one encoder out of a 10 GB reference checkpoint does not
    load the optimizer state into memory."""
    import torch
    p = existing(path)
    if p.is_dir():
        raise CheckpointReadError(f"cannot read {p}: it is a folder, not a PyTorch file")
    try:
        return torch.load(p, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(p))
    except pickle.UnpicklingError as e:
        # bytes that are no pickle at all (a torn or foreign file) fail as an "Unsupported operand": not unsafe
        if "Weights only load failed" in str(e) and "Unsupported operand" not in str(e):
            # torch words this "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module..."
            m = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), flags=re.IGNORECASE)
            what = f" (it references {m.group(1)})" if m else ""
            raise UnsafeCheckpointError(
                f"refused to unpickle {p}: it holds objects other than tensors and plain containers{what}, "
                "and loading those would run code from the file. If you trust it, torch.load(..., "
                "weights_only=False) it yourself and pass the state dict to ijepa.interop.load.") from None
        raise CheckpointReadError(f"cannot read {p}: the file is truncated, corrupt or not a PyTorch checkpoint "
                                  "(not a pickle of tensors)") from None
    except Exception as e:  # torch raises OSError, RuntimeError, KeyError... for torn or foreign files
        raise CheckpointReadError(
            f"cannot read {p}: the file is truncated, corrupt or not a PyTorch checkpoint ({first_line(e)})"
        ) from None


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a ``.safetensors`` file and its string metadata."""
    from safetensors import safe_open

    p = existing(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # SafetensorError for a torn header, OSError for unreadable files
        raise CheckpointReadError(
            f"cannot read {p}: the file is truncated, corrupt or not a safetensors file ({first_line(e)})"
        ) from None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointReadError(f"cannot read {p}: {first_line(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointReadError(f"{p} does not hold a JSON object")
    return obj
