"""Feature files that say what they hold.

A :class:`FeatureSet` is the features with everything needed to use them later: the label of each row, what each
row *is* (a path relative to the dataset root, or an index into in-memory data), the class names, the inputs that
were skipped and why, and how the features were made (the model's ``source``, the pooling, the input spec).

On disk, by extension:

- ``feats.npy``: the features; ``feats_labels.npy`` the labels; ``feats.json`` the record (everything else).
- ``feats.safetensors``: tensors ``features`` and ``labels``; the record as JSON in the metadata under
  ``"ijepa_features"`` (readable by any safetensors tool: ``safe_open(path, "pt").metadata()``). The safetensors
  header holds at most 100 MB, about two million row paths; use ``.npy`` beyond that.

Every file is replaced atomically. The three ``.npy`` files cannot be renamed into place together, so they are
tied by content instead: the record holds the row count and the sha256 of the features and labels files, and is
renamed into place before them (all three are written first under temporary names). A kill at any moment leaves the
old set, the new set, or files the record does not describe, which :func:`load_features` refuses in one line: it
never pairs features with labels or a record from another write. It reads either format back in one call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, first_line
from ..io import atomic_open, atomic_write_json, read_safetensors, write_safetensors

__all__ = ["FORMAT", "FeatureSet", "check_feature_path", "load_features", "record_path", "save_features"]

FORMAT = "ijepa-features"
VERSION = 1
_META_KEY = "ijepa_features"
_MAX_HEADER = 90_000_000  # safetensors refuses headers above 100 MB; leave room for the tensors' entries


@dataclass
class FeatureSet:
    """Features and what they hold.

    Attributes:
        features: (N, D), or (N, T, D) for token features.
        labels: (N,) class indices, or None.
        rows: ``rows[i]`` is what row ``i`` came from: a path relative to ``meta["root"]`` for files, an index
            for in-memory data (``None`` when the input did not say, e.g. a DataLoader).
        classes: the class names, ``classes[label]``, when known.
        skipped: ``{"source", "reason"}`` of every input that gave no row.
        meta: how the features were made (``source``, ``pooling``, ``input_spec``, ``dataset``, ``root``,
            ``split``, ...).
    """

    features: torch.Tensor
    labels: torch.Tensor | None = None
    rows: list[str | int] | None = None
    classes: list[str] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = torch.as_tensor(self.features)
        n = len(self.features)
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels)
            if len(self.labels) != n:
                raise ValueError(f"{n} feature rows but {len(self.labels)} labels")
        if self.rows is not None:
            self.rows = list(self.rows)
            if len(self.rows) != n:
                raise ValueError(f"{n} feature rows but {len(self.rows)} row sources")

    def __len__(self) -> int:
        return len(self.features)

    def record(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-able data (what the sidecar / metadata holds)."""
        return {"format": FORMAT, "version": VERSION, "n_rows": len(self), "shape": list(self.features.shape),
                "rows": self.rows, "classes": self.classes, "skipped": list(self.skipped), "meta": _plain(self.meta)}


def _plain(obj: Any) -> Any:
    """Tuples to lists, tensors and NumPy scalars to Python numbers, mappings to dicts: what JSON can hold."""
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return _plain(obj.tolist())
    if hasattr(obj, "to_dict"):  # InputSpec
        return _plain(obj.to_dict())
    return obj


def record_path(path: str | os.PathLike) -> Path:
    """The sidecar JSON of a ``.npy`` feature file: ``feats.npy`` -> ``feats.json``."""
    return Path(path).with_suffix(".json")


def _labels_path(path: Path) -> Path:
    return path.with_name(path.stem + "_labels.npy")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise DataError(f"unsupported feature file extension {path.suffix!r}; use .npy or .safetensors")
    return suffix


def check_feature_path(path: str | os.PathLike) -> Path:
    """``path`` if features can be saved there (a ``.npy`` or ``.safetensors`` name, not a folder), else a
    :class:`DataError`: what ``ijepa extract`` checks before any work."""
    p = Path(path).expanduser()
    _suffix(p)
    if p.is_dir():
        raise DataError(f"{p} is a folder; name a feature file ending in .npy or .safetensors")
    return p


class _Hashing:
    """A write-only file that hashes what passes through it, so the hash costs no second pass over the file."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)


def _save_npy(path: Path, feats: torch.Tensor, lab: torch.Tensor | None, record: dict[str, Any]) -> None:
    """The three files of a ``.npy`` feature set, tied by the record (see the module docstring): features and
    labels go to temporary files, hashed as they are written; then the record with their hashes is renamed into
    place; then the labels and the features (leaving the stack renames them, last opened first)."""
    with contextlib.ExitStack() as stack:
        files, sha = [], {"features": None, "labels": None}
        for key, p, t in (("features", path, feats), ("labels", _labels_path(path), lab)):
            if t is not None:
                files.append(_Hashing(stack.enter_context(atomic_open(p))))
                np.save(files[-1], t.numpy())
                sha[key] = files[-1].sha.hexdigest()
        for h in files:  # on disk before the record goes in: after it, only renames remain (the window is short)
            h.f.flush()
            os.fsync(h.f.fileno())
        atomic_write_json(record_path(path), {**record, "sha256": sha})
    if lab is None:
        _labels_path(path).unlink(missing_ok=True)  # the record says there are none; an old file only confuses


def save_features(path: str | os.PathLike, features: FeatureSet | torch.Tensor | np.ndarray,
                  labels: torch.Tensor | np.ndarray | None = None) -> Path:
    """Write a ``FeatureSet`` (or bare features and labels: their rows are then indices), atomically.

    Args:
        path: ``.npy`` (the labels go to ``<stem>_labels.npy``, the record to ``<stem>.json``) or
            ``.safetensors`` (the record goes in its metadata).
        features: a ``FeatureSet``, or bare features.
        labels: with bare features, their labels.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = _suffix(path)
    fs = features if isinstance(features, FeatureSet) else FeatureSet(
        torch.as_tensor(features), None if labels is None else torch.as_tensor(labels),
        rows=list(range(len(features))))
    feats = fs.features.detach().cpu().contiguous()
    lab = None if fs.labels is None else fs.labels.detach().cpu().contiguous()
    record = json.dumps(fs.record())
    if suffix == ".npy":
        _save_npy(path, feats, lab, json.loads(record))
        return path
    if len(record) > _MAX_HEADER:
        raise DataError(f"the record of {len(fs)} rows ({len(record):,} bytes of JSON) does not fit in a "
                        f"safetensors header; write {path.with_suffix('.npy')} instead (the record goes beside it)")
    tensors = {"features": feats} if lab is None else {"features": feats, "labels": lab}
    return write_safetensors(tensors, path, metadata={_META_KEY: record})


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Read a feature file back: features, labels, what each row is, classes, what was skipped, and how the
    features were made.

    Files written before records existed load with ``rows=None`` and an empty record.

    Args:
        path: a ``.npy`` or ``.safetensors`` file written by ``save_features`` or ``ijepa extract``.

    Returns:
        The ``FeatureSet``.

    Raises:
        ijepa.errors.DataError: no such file, a record that belongs to another extraction, or ``.npy`` files
            whose sha256 differs from the record's (written by different writes: one was interrupted).
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise DataError(f"no feature file at {path}")
    if suffix == ".npy":
        feats, labels, record = _load_npy(path)
    else:
        tensors, metadata = read_safetensors(path)
        feats, labels = tensors["features"], tensors.get("labels")
        record = _parse(metadata[_META_KEY], path) if _META_KEY in metadata else None
    try:
        if record is None:
            return FeatureSet(feats, labels)
        return FeatureSet(feats, labels, rows=record.get("rows"), classes=record.get("classes"),
                          skipped=record.get("skipped") or [], meta=record.get("meta") or {})
    except ValueError as e:  # rows, labels and features of different lengths
        raise DataError(f"{path}: {e}; the files come from different extractions") from None


def _read_npy(path: Path) -> tuple[torch.Tensor, str]:
    """An array and the sha256 of its file, both from one open file (a rename meanwhile cannot split them)."""
    try:
        with open(path, "rb") as f:
            arr = np.load(f)
            f.seek(0)
            return torch.from_numpy(arr), hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path}: {first_line(e)}") from None


def _load_npy(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any] | None]:
    """Features, labels and record of a ``.npy`` set, checked against each other: the row count, and the sha256
    of each file where the record holds them (records written before hashes were kept are trusted on the count)."""
    rp, lp = record_path(path), _labels_path(path)
    record = _parse(rp.read_text(), rp) if rp.is_file() else None
    feats, feats_sha = _read_npy(path)
    if record is not None and record.get("n_rows") != len(feats):
        raise DataError(f"{path}: the record describes {record.get('n_rows')} rows but the file holds "
                        f"{len(feats)}; it belongs to another extraction")
    sha = (record or {}).get("sha256")
    if sha is None:
        return feats, (_read_npy(lp)[0] if lp.is_file() else None), record
    stale = "the files come from different writes (one was interrupted, or a file was replaced); write them again"
    if feats_sha != sha.get("features"):
        raise DataError(f"{path}: the features are not the ones {rp.name} describes (their sha256 differs); {stale}")
    if sha.get("labels") is None:
        return feats, None, record
    if not lp.is_file():
        raise DataError(f"{path}: {rp.name} lists labels but {lp.name} is missing; {stale}")
    labels, labels_sha = _read_npy(lp)
    if labels_sha != sha["labels"]:
        raise DataError(f"{path}: {lp.name} is not the labels {rp.name} describes (their sha256 differs); {stale}")
    return feats, labels, record


def _parse(text: str, where: Path) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError as e:
        raise DataError(f"{where}: the feature record is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{where}: not an ijepa feature record")
    return record
