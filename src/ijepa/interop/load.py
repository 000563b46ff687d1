"""``load``, ``export`` and ``convert``: one entry point for every I-JEPA checkpoint layout we know.

``load`` reads top-down, one step per file:
  1. locate   a published model's name -> its file (downloaded to the cache once) and architecture (registry.py);
              a Hugging Face Hub repo id -> its snapshot in the Hub cache (hub.py); a run folder -> its latest
              checkpoint; a fine-tuning run's folder -> its encoder; a missing path -> CheckpointNotFoundError
  2. detect + read + map keys   -> :class:`Weights` in our names (detect.py, which hands each format to its
              own file: reference.py, hf.py, timm.py, native.py)
  3. build    the encoder (and predictor) from those weights, strictly (build.py)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError
from ..io import check_replaceable, read_json
from ..models.predictor import VisionTransformerPredictor
from ..models.vit import VisionTransformer
from . import hf, hub, native, registry, sharded
from . import timm as timm_fmt
from .arch import normalise_arch
from .build import build_encoder, build_predictor
from .detect import read_weights
from .modelcard import model_card
from .weights import check_which

ExportFormat = Literal["ijepa", "hf", "timm"]


# The file that makes a folder a fine-tuned classifier (ijepa.eval.finetune.files.save_classifier writes it); its
# "encoder" names the encoder's file in that folder.
CLASSIFIER_INFO = "classifier.json"


def run_checkpoint(path: Any) -> Any:
    """A folder that stands for one file: a training run's (``ijepa train --out DIR``) is its latest checkpoint
    (the single file, or a ``meta.parallel: fsdp`` run's sharded folder);
    a fine-tuning run's (``ijepa finetune --out DIR``) or its ``model/`` folder is the fine-tuned encoder."""
    if isinstance(path, (str, os.PathLike)):
        p = Path(path).expanduser()
        if p.is_dir() and not (p / "config.json").exists():
            latest = sorted(p.glob("*-latest.pth.tar"))
            if latest:
                return latest[0]
            found = sharded.latest_in(p)  # a meta.parallel: fsdp run's
            if found is not None:
                return found
            for d in (p, p / "model"):
                if (d / CLASSIFIER_INFO).is_file():
                    return d / str(read_json(d / CLASSIFIER_INFO).get("encoder") or "encoder.safetensors")
    return path


def _check_destination(dst: str | os.PathLike, to: str) -> None:
    """Fail before anything is read where the export could not be written: a folder export over a file, or over
    a folder holding files the export does not hold (it replaces the whole folder)."""
    if to == "hf":
        hf.check_export_folder(dst)
    elif to == "timm" and Path(dst).suffix != ".safetensors":
        check_replaceable(dst, timm_fmt.TIMM_EXPORT_FILES, "timm export")


def _check_exists(src: Any) -> Any:
    if isinstance(src, (str, os.PathLike)) and not Path(src).expanduser().exists():
        raise CheckpointNotFoundError(f"no checkpoint at {Path(src).expanduser()}: the path does not exist "
                                      f"(published model names: {', '.join(registry.PUBLISHED)})")
    return src


def load(path_or_dir: str | os.PathLike | Mapping[str, Any], *, which: str = "target_encoder",
         arch: str | Mapping[str, Any] | None = None, img_size: int | tuple[int, int] | None = None,
         with_predictor: bool = False, strict: bool = True, path: str | os.PathLike | None = None,
         revision: str | None = None
         ) -> VisionTransformer | tuple[VisionTransformer, VisionTransformerPredictor | None]:
    """Build our ``VisionTransformer`` from any I-JEPA checkpoint (see ``ijepa.interop.detect`` for the formats).

    Args:
        path_or_dir: a file, a transformers/timm export directory, a run folder (training: its latest checkpoint;
            ``ijepa finetune --out``: the fine-tuned encoder), an in-memory state dict or
            checkpoint dict, a published model's name (``"vith14-in1k"``…, see ``ijepa.interop.PUBLISHED``)
            with ``path=FILE`` (else the file in ``$IJEPA_HOME``, downloaded there once when it is missing), or a
            Hugging Face Hub repo id of a transformers I-JEPA model (``"facebook/ijepa_vith14_1k"``; the Hub's
            cache, ``HF_HUB_OFFLINE`` and progress bars apply).
        which: for files holding both encoders (the reference's, our training checkpoints):
            ``"target_encoder"`` (the EMA encoder the paper evaluates) or ``"encoder"`` (the context encoder —
            what timm's and transformers' ports of the published models carry). Single-encoder formats ignore
            it; the returned encoder's ``.source`` says what was loaded.
        arch: overrides the architecture otherwise read from the file and its weights: a size name
            (``"vit_huge"``), VisionTransformer kwargs, or ``{"encoder": {...}, "predictor": {...}}``.
        img_size: resolution to build at; a stored position table of another grid is resampled (bicubic, the
            same operation the model applies on the fly). Also declares the resolution of a non-square table.
        with_predictor: return ``(encoder, predictor)``; the predictor is None when the file has none.
        strict: every key must fit, else ``ijepa.errors.CheckpointMismatchError``; ``False`` loads the matching
            keys and warns about the rest.
        path: the file for a published model's name.
        revision: for a Hub repo id, the branch, tag or commit (default: main).

    Returns:
        The encoder, in eval mode, or ``(encoder, predictor)`` with ``with_predictor``. The encoder carries
        ``input_spec`` (from the file when it says, else ImageNet statistics at its resolution) and ``source``, a
        short description of what was loaded.

    Raises:
        ijepa.errors.CheckpointError: the file is missing, unreadable, unsafe to unpickle, of no known layout, or
            does not fit the model.
    """
    check_which(which)
    published = registry.lookup(path_or_dir, path)
    from_hub = published is None and hub.is_repo_id(path_or_dir)
    if revision is not None and not from_hub:
        raise CheckpointError(f"revision= is for Hugging Face Hub repo ids (owner/name); got {path_or_dir!r}")
    if published is not None:
        src = registry.resolve_path(published, path)
        arch = published.model_arch() if arch is None else arch
    elif from_hub:
        src = hub.snapshot(path_or_dir, revision)
    else:
        src = _check_exists(path_or_dir)
    w = read_weights(run_checkpoint(src), which)
    enc_arch, pred_arch = normalise_arch(arch)
    with torch.no_grad():
        encoder = build_encoder(w, enc_arch, img_size, strict).eval()
        predictor = build_predictor(w, encoder, pred_arch, strict) if with_predictor else None
    if published is not None:
        encoder.source = f"{published.name}: {encoder.source}"
    elif from_hub:
        encoder.source = f"{path_or_dir}@{revision or 'main'} (Hugging Face Hub): {encoder.source}"
    if predictor is not None:
        predictor.eval()
    return (encoder, predictor) if with_predictor else encoder


def export(encoder: VisionTransformer, dst: str | os.PathLike, to: ExportFormat = "ijepa", *,
           predictor: VisionTransformerPredictor | None = None, source: str | None = None,
           card: str | None = None) -> Path:
    """Write an encoder (and, for ``to="ijepa"``, optionally its predictor) in one of the formats.

    Args:
        encoder: the encoder to write.
        dst: the file or directory to write.
        to: the format:

            - ``"ijepa"``: one ``.safetensors`` file, architecture and input_spec as JSON metadata (our preferred
              export; ``load`` rebuilds it exactly);
            - ``"hf"``: a directory ``transformers.IJepaModel.from_pretrained`` loads (config.json,
              model.safetensors, preprocessor_config.json);
            - ``"timm"``: a directory ``timm.create_model("local-dir:DIR", pretrained=True)`` loads, or a
              ``.safetensors`` file plus a ``<stem>.json`` sidecar when ``dst`` ends in ``.safetensors``.
        predictor: a predictor to keep beside the encoder (``to="ijepa"`` only).
        source: what the file says it was made from (default: the encoder's ``source``).
        card: ``to="hf"``: its model card, README.md (default: the one :func:`.modelcard.model_card` writes from
            the encoder alone).

    Returns:
        The path written (the directory, or the weights file).
    """
    if to == "ijepa":
        return native.save_native(encoder, dst, predictor, source)
    if predictor is not None:
        raise CheckpointError(f"a {to} export holds an encoder only; use to='ijepa' to keep the predictor")
    if to == "hf":
        return hf.save_hf(encoder, dst, source, card if card is not None else model_card(encoder))
    if to == "timm":
        return timm_fmt.save_timm(encoder, dst, source)
    raise CheckpointError(f"to={to!r}: choose 'ijepa', 'hf' or 'timm'")


def convert(src: str | os.PathLike | Mapping[str, Any], dst: str | os.PathLike, to: ExportFormat = "ijepa",
            which: str = "target_encoder", *, with_predictor: bool = False, arch: Any = None,
            img_size: int | tuple[int, int] | None = None, strict: bool = True,
            path: str | os.PathLike | None = None, revision: str | None = None, license: str | None = None) -> Path:
    """``load`` ``src`` (any format it reads, a published name, a Hub repo id) and ``export`` it ``to`` a
    format.

    Args:
        src: anything ``load`` reads.
        dst: the file or directory to write.
        to: ``"ijepa"``, ``"hf"`` or ``"timm"``, as for ``export``.
        which: ``"target_encoder"`` or ``"encoder"``, as for ``load``.
        with_predictor: keep the predictor (``to="ijepa"`` only).
        arch: as for ``load``.
        img_size: as for ``load``.
        strict: as for ``load``.
        path: as for ``load``.
        revision: as for ``load``.
        license: ``to="hf"``: the licence its model card (README.md) states (``modelcard.choose_license``: the
            reference's weights carry theirs; default ``unknown``).

    Returns:
        The path written.
    """
    _check_destination(dst, to)
    if license is not None and to != "hf":
        raise ConfigError(f"license={license!r}: only a transformers export (to='hf') carries a model card")
    out = load(src, which=which, arch=arch, img_size=img_size, with_predictor=with_predictor, strict=strict,
               path=path, revision=revision)
    encoder, predictor = out if isinstance(out, tuple) else (out, None)
    card = model_card(encoder, src=src, license=license) if to == "hf" else None
    return export(encoder, dst, to, predictor=predictor, card=card)


__all__ = ["convert", "export", "load", "read_weights", "run_checkpoint"]
