"""Safe reads and atomic writes: the one place that touches files holding weights or run state.

Every write goes to a temporary file in the destination's folder, is flushed and fsynced, then renamed over the
destination, so a crash (even SIGKILL) leaves either the old file or the new one, never a torn one. Every
pickle is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import CheckpointNotFoundError, CheckpointReadError, UnsafeCheckpointError, first_line

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "existing", "read_json",
           "read_safetensors", "read_torch", "save_torch", "write_safetensors"]


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


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kw) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it is fsynced and renamed over
    ``path``; on an exception it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
