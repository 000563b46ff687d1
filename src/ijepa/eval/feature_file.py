"""Feature files that say what they hold.

A :class:`FeatureSet` is the features with everything needed to use them later: the label of each row, what each
row *is* (a path relative to the dataset root, or an index into in-memory data), the class names, the inputs that
were skipped and why, and how the features were made (the model's ``source``, the pooling, the input spec).

On disk, by extension:

- ``feats.npy``: the features; ``feats_labels.npy`` the labels; ``feats.json`` the record (everything else).
- ``feats.safetensors``: tensors ``features`` and ``labels``; the record as JSON in the metadata under
  ``"ijepa_features"`` (readable by any safetensors tool: ``safe_open(path, "pt").metadata()``). The safetensors
  header holds at most 100 MB, about two million row paths; use ``.npy`` beyond that.

Every file is replaced atomically, the features last, and the record states the row count, so a reader never
pairs features with a record from another extraction. :func:`load_features` reads either back in one call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..io import atomic_open, atomic_write_json, read_safetensors, write_safetensors

__all__ = ["FORMAT", "FeatureSet", "load_features", "record_path", "save_features"]

FORMAT = "ijepa-features"
VERSION = 1
_META_KEY = "ijepa_features"
_MAX_HEADER = 90_000_000  # safetensors refuses headers above 100 MB; leave room for the tensors' entries


@dataclass
class FeatureSet:
    """Features and what they hold. ``rows[i]`` is what row ``i`` came from: a path relative to
    ``meta["root"]`` for files, an index for in-memory data (``None`` when the input did not say, e.g. a
    DataLoader). ``skipped``: ``{"source", "reason"}`` of every input that gave no row. ``meta``: how the
    features were made (``source``, ``pooling``, ``input_spec``, ``dataset``, ``root``, ``split``, ...)."""

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


def save_features(path: str | os.PathLike, features: FeatureSet | torch.Tensor | np.ndarray,
                  labels: torch.Tensor | np.ndarray | None = None) -> Path:
    """Write a :class:`FeatureSet` (or bare features and labels: their rows are then indices) by extension
    (see the module docstring). Returns the path written."""
    path = Path(path)
    suffix = _suffix(path)
    fs = features if isinstance(features, FeatureSet) else FeatureSet(
        torch.as_tensor(features), None if labels is None else torch.as_tensor(labels),
        rows=list(range(len(features))))
    feats = fs.features.detach().cpu().contiguous()
    lab = None if fs.labels is None else fs.labels.detach().cpu().contiguous()
    record = json.dumps(fs.record())
    if suffix == ".npy":
        atomic_write_json(record_path(path), json.loads(record))
        if lab is not None:
            with atomic_open(_labels_path(path)) as f:
                np.save(f, lab.numpy())
        else:
            _labels_path(path).unlink(missing_ok=True)  # a stale one would pair with these features
        with atomic_open(path) as f:
            np.save(f, feats.numpy())
        return path
    if len(record) > _MAX_HEADER:
        raise DataError(f"the record of {len(fs)} rows ({len(record):,} bytes of JSON) does not fit in a "
                        f"safetensors header; write {path.with_suffix('.npy')} instead (the record goes beside it)")
    tensors = {"features": feats} if lab is None else {"features": feats, "labels": lab}
    return write_safetensors(tensors, path, metadata={_META_KEY: record})


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Read a feature file back: features, labels, what each row is, classes, what was skipped, and how the
    features were made. Files written before records existed load with ``rows=None`` and an empty record."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise DataError(f"no feature file at {path}")
    if suffix == ".npy":
        feats = torch.from_numpy(np.load(path))
        lp = _labels_path(path)
        labels = torch.from_numpy(np.load(lp)) if lp.is_file() else None
        rp = record_path(path)
        record = _parse(rp.read_text(), rp) if rp.is_file() else None
    else:
        tensors, metadata = read_safetensors(path)
        feats, labels = tensors["features"], tensors.get("labels")
        record = _parse(metadata[_META_KEY], path) if _META_KEY in metadata else None
    if record is None:
        return FeatureSet(feats, labels)
    if record.get("n_rows") != len(feats):
        raise DataError(f"{path}: the record describes {record.get('n_rows')} rows but the file holds "
                        f"{len(feats)}; it belongs to another extraction")
    return FeatureSet(feats, labels, rows=record.get("rows"), classes=record.get("classes"),
                      skipped=record.get("skipped") or [], meta=record.get("meta") or {})


def _parse(text: str, where: Path) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError as e:
        raise DataError(f"{where}: the feature record is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{where}: not an ijepa feature record")
    return record
