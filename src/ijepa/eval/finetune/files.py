"""A fine-tuned classifier on disk: our folder (encoder export + head + ``classifier.json``) and transformers'
``IJepaForImageClassification`` layout, both written and read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ...data.preprocess import resolve_input_spec
from ...errors import CheckpointError, UnknownFormatError
from ...interop import export, load
from ...interop.hf import (
    HF_BASE_PREFIX,
    HF_SOURCE_METADATA_KEY,
    config_for,
    preprocessor_config_for,
    to_hf,
    write_hf_folder,
)
from ...interop.modelcard import model_card
from ...io import atomic_write_json, read_json, read_safetensors, write_safetensors
from .model import ClassifierModel

CLASSIFIER_FORMAT = "ijepa-classifier"
CLASSIFIER_FORMAT_VERSION = 1


def _id2label(model: ClassifierModel, id2label: dict[int, str] | None) -> dict[int, str]:
    labels = id2label if id2label is not None else getattr(model, "id2label", None)
    labels = {int(k): str(v) for k, v in (labels or {}).items()}
    out = {i: labels.get(i, f"LABEL_{i}") for i in range(model.num_classes)}
    if len(set(out.values())) != len(out):
        raise ValueError(f"class names must be unique, got {list(out.values())}")
    return out


def save_classifier(model: ClassifierModel, dst: str | os.PathLike, *, id2label: dict[int, str] | None = None,
                    config: dict[str, Any] | None = None, source: str | None = None) -> Path:
    """Our format: a directory with ``encoder.safetensors`` (our encoder export: ``ijepa.load`` reads it),
    ``head.safetensors`` (``weight``, ``bias``) and ``classifier.json`` (classes, pooling, fine-tuning
    config). :func:`load_classifier` reads it back. Returns the directory."""
    d = Path(dst)
    d.mkdir(parents=True, exist_ok=True)
    src = source or getattr(model.encoder, "source", None) or "ijepa encoder"
    export(model.encoder, d / "encoder.safetensors", "ijepa", source=f"fine-tuned classifier encoder ({src})")
    write_safetensors({"weight": model.head.weight, "bias": model.head.bias}, d / "head.safetensors",
                      {"format": CLASSIFIER_FORMAT})
    labels = _id2label(model, id2label)
    atomic_write_json(d / "classifier.json", {
        "format": CLASSIFIER_FORMAT, "version": CLASSIFIER_FORMAT_VERSION, "pooling": "mean",
        "num_classes": model.num_classes, "id2label": {str(k): v for k, v in labels.items()},
        "encoder": "encoder.safetensors", "head": "head.safetensors", "source": src, "finetune": config})
    return d


def save_hf_classifier(model: ClassifierModel, dst: str | os.PathLike,
                       id2label: dict[int, str] | None = None, source: str | None = None,
                       card: str | None = None) -> Path:
    """Write a directory ``transformers.IJepaForImageClassification.from_pretrained(dst)`` loads with no code
    of ours: ``config.json`` (the encoder fields of ``ijepa.interop.hf.config_for`` plus the labels),
    ``model.safetensors`` (the encoder under ``ijepa.`` in the hub layout, the head as ``classifier.``),
    ``preprocessor_config.json`` and the model card ``README.md`` (``card``, default: one from the model alone),
    written whole (``ijepa.interop.hf.write_hf_folder``). ``ijepa.load(dst)`` reads the encoder back (the
    classifier is ignored)."""
    d = Path(dst)
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"{d} exists and is not a directory; a transformers export is a directory")
    enc = model.encoder
    labels = _id2label(model, id2label)
    tensors = {HF_BASE_PREFIX + k: v for k, v in to_hf(enc.state_dict()).items()}
    tensors["classifier.weight"] = model.head.weight
    tensors["classifier.bias"] = model.head.bias
    stated = source or f"fine-tuned classifier ({getattr(enc, 'source', None) or 'ijepa encoder'})"
    cfg = config_for(enc)
    cfg.update(architectures=["IJepaForImageClassification"], num_labels=len(labels),
               id2label={str(k): v for k, v in labels.items()}, label2id={v: k for k, v in labels.items()},
               problem_type="single_label_classification")
    return write_hf_folder(d, tensors, {"format": "pt", HF_SOURCE_METADATA_KEY: stated}, cfg,
                           preprocessor_config_for(resolve_input_spec(enc)),
                           card if card is not None else model_card(enc, classifier={}))


def load_classifier(src: str | os.PathLike) -> ClassifierModel:
    """Read a :func:`save_classifier` directory or a transformers ``IJepaForImageClassification`` directory
    (e.g. from :func:`save_hf_classifier`) into a :class:`ClassifierModel` (eval mode)."""
    d = Path(src)
    if (d / "classifier.json").is_file():
        info = read_json(d / "classifier.json")
        encoder = load(d / info.get("encoder", "encoder.safetensors"))
        head, _ = read_safetensors(d / info.get("head", "head.safetensors"))
        weight, bias = head["weight"], head["bias"]
        labels = info.get("id2label")
    elif (d / "config.json").is_file() and (d / "model.safetensors").is_file():
        cfg = read_json(d / "config.json")
        sd, _ = read_safetensors(d / "model.safetensors")
        if "classifier.weight" not in sd:
            raise UnknownFormatError(f"{d} holds no classifier (no classifier.weight in model.safetensors)")
        encoder = load(d)
        weight, bias = sd["classifier.weight"], sd["classifier.bias"]
        labels = cfg.get("id2label")
    else:
        raise UnknownFormatError(f"{d}: neither a fine-tuned classifier folder (classifier.json) nor a "
                                 "transformers IJepaForImageClassification folder (config.json + "
                                 "model.safetensors)")
    model = ClassifierModel(encoder, weight.shape[0],
                            id2label={int(k): v for k, v in labels.items()} if labels else None)
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    return model.eval()
