"""One entry point for every I-JEPA checkpoint layout we know, and conversion between them.

Detection, in order:
  a directory           config.json with ``model_type``  -> transformers IJepaModel (hf.py)
                        config.json with ``architecture`` -> timm export (timm.py)
  ``.safetensors``      metadata ``format: ijepa``       -> our export (native.py)
                        transformers names               -> transformers state dict (hf.py)
                        reference/timm names             -> timm state dict (timm.py)
  anything else         a ``weights_only`` torch pickle:
                        ``format: ijepa`` + models       -> our training checkpoint (native.py)
                        ``encoder``/``target_encoder``   -> the reference's .pth.tar (reference.py)
                        a flat state dict                -> by its names, as for .safetensors
  a registry name       (``"vith14-in1k"``, with ``path=``)  -> registry.py
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from ..models.predictor import VisionTransformerPredictor
from ..models.vit import VisionTransformer
from . import hf, native, reference, registry
from . import timm as timm_fmt
from .native import (
    CheckpointNotFoundError,
    UnknownFormatError,
    Weights,
    build_encoder_from_weights,
    build_predictor_from_weights,
    normalise_arch,
    read_safetensors,
    read_torch_file,
    split_predictor,
    strip_wrappers,
    tensors_only,
)

ExportFormat = Literal["ijepa", "hf", "timm"]
# Containers that some tools wrap a state dict in.
STATE_DICT_WRAPPERS = ("state_dict", "model")


def _from_flat(sd: Mapping[str, Any], meta: Mapping[str, str], path: str, which: str) -> Weights:
    sd = strip_wrappers(tensors_only(sd, path))
    keys = list(sd)
    if hf.looks_like_hf(keys):
        return hf.read_hf_state(sd, meta, path)
    enc, pred = split_predictor(sd)
    if "patch_embed.proj.weight" in enc or any(k.startswith("blocks.") for k in enc):
        cfg = timm_fmt.sidecar_for(Path(path)) if Path(path).is_file() else None
        w = timm_fmt.read_timm_state(enc, path, cfg)
        w.predictor = pred or None
        return w
    raise UnknownFormatError(
        f"{path}: not a checkpoint layout we know (reference .pth.tar, transformers IJepaModel, timm ViT or "
        f"ijepa); its first keys are: {', '.join(keys[:5]) or '(none)'}")


def _from_object(obj: Any, path: str, which: str) -> Weights:
    if not isinstance(obj, Mapping):
        raise UnknownFormatError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    if native.is_training_checkpoint(obj):
        return native.read_training_checkpoint(obj, reference.check_which(which), path)
    if reference.is_reference(obj):
        return reference.read_reference(obj, which, path)
    for k in STATE_DICT_WRAPPERS:
        if isinstance(obj.get(k), Mapping) and len(obj) <= 3:
            return _from_object(obj[k], path, which)
    return _from_flat(obj, {}, path, which)


def read_weights(src: str | os.PathLike | Mapping[str, Any], which: str = "target_encoder") -> Weights:
    """Detect the format of ``src`` and translate it to our names (no model is built)."""
    reference.check_which(which)
    if isinstance(src, Mapping):
        return _from_object(src, "<state dict>", which)
    p = native.check_exists(src)
    if p.is_dir():
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise UnknownFormatError(f"{p} is a directory without config.json: neither a transformers nor a "
                                     "timm export")
        cfg = native.read_json(cfg_file)
        if timm_fmt.is_timm_config(cfg):
            sd, meta = read_safetensors(p / "model.safetensors") if (p / "model.safetensors").is_file() else (
                tensors_only(read_torch_file(p / "pytorch_model.bin"), str(p)), {})
            enc, _ = split_predictor(strip_wrappers(sd))
            return timm_fmt.read_timm_state(enc, str(p), cfg)
        if hf.is_hf_dir(p, cfg):
            return hf.read_hf_dir(p, cfg)
        raise UnknownFormatError(f"{cfg_file} is neither a transformers nor a timm config")
    if p.suffix == ".safetensors":
        sd, meta = read_safetensors(p)
        if native.is_native_export(meta):
            return native.read_native_export(sd, meta, str(p))
        return _from_flat(sd, meta, str(p), which)
    return _from_object(read_torch_file(p), str(p), which)


def run_checkpoint(path: Any) -> Any:
    """A training run's folder (``ijepa train --out DIR``) stands for its latest checkpoint."""
    if isinstance(path, (str, os.PathLike)):
        p = Path(path).expanduser()
        if p.is_dir() and not (p / "config.json").exists():
            latest = sorted(p.glob("*-latest.pth.tar"))
            if latest:
                return latest[0]
    return path


def load(path_or_dir: str | os.PathLike | Mapping[str, Any], *, which: str = "target_encoder",
         arch: str | Mapping[str, Any] | None = None, img_size: int | tuple[int, int] | None = None,
         with_predictor: bool = False, strict: bool = True, path: str | os.PathLike | None = None
         ) -> VisionTransformer | tuple[VisionTransformer, VisionTransformerPredictor | None]:
    """Build our ``VisionTransformer`` from any I-JEPA checkpoint (see the module docstring for formats).

    Args:
        path_or_dir: a file, a transformers/timm export directory, an in-memory state dict or checkpoint
            dict, or a published model's name (``"vith14-in1k"``…, see ``ijepa.interop.PUBLISHED``) with
            ``path=FILE``.
        which: for files holding both encoders (the reference's, our training checkpoints):
            ``"target_encoder"`` (the EMA encoder the paper evaluates) or ``"encoder"`` (the context encoder —
            what timm's and transformers' ports of the published models carry). Single-encoder formats ignore
            it; the returned encoder's ``.source`` says what was loaded.
        arch: overrides the architecture otherwise read from the file and its weights: a size name
            (``"vit_huge"``), VisionTransformer kwargs, or ``{"encoder": {...}, "predictor": {...}}``.
        img_size: resolution to build at; a stored position table of another grid is resampled (bicubic, the
            same operation the model applies on the fly). Also declares the resolution of a non-square table.
        with_predictor: return ``(encoder, predictor)``; the predictor is None when the file has none.
        strict: every key must fit, else :class:`CheckpointMismatchError`; ``False`` loads the matching keys
            and warns about the rest.
        path: the file for a published model's name.

    The encoder carries ``input_spec`` (from the file when it says, else ImageNet statistics at its
    resolution) and ``source``, a short description of what was loaded.
    """
    if path is not None or (isinstance(path_or_dir, str) and not Path(path_or_dir).expanduser().exists()
                            and registry.is_name(path_or_dir)):
        if not isinstance(path_or_dir, str) or not registry.is_name(path_or_dir):
            names = ", ".join(registry.PUBLISHED)
            raise CheckpointNotFoundError(
                f"path= is for published model names ({names}); got {path_or_dir!r}")
        return registry.load_published(path_or_dir, path, which=which, arch=arch, img_size=img_size,
                                       with_predictor=with_predictor, strict=strict)
    if isinstance(path_or_dir, (str, os.PathLike)) and not Path(path_or_dir).expanduser().exists():
        raise CheckpointNotFoundError(f"no checkpoint at {Path(path_or_dir).expanduser()}: the path does not "
                                      f"exist (published model names: {', '.join(registry.PUBLISHED)})")
    path_or_dir = run_checkpoint(path_or_dir)
    w = read_weights(path_or_dir, which)
    enc_arch, pred_arch = normalise_arch(arch)
    with torch.no_grad():
        encoder = build_encoder_from_weights(w, enc_arch, img_size, strict)
        encoder.eval()
        if not with_predictor:
            return encoder
        predictor = build_predictor_from_weights(w, encoder, pred_arch, strict)
    if predictor is not None:
        predictor.eval()
    return encoder, predictor


def export(encoder: VisionTransformer, dst: str | os.PathLike, to: ExportFormat = "ijepa", *,
           predictor: VisionTransformerPredictor | None = None, source: str | None = None) -> Path:
    """Write an encoder (and, for ``to="ijepa"``, optionally its predictor) in one of the formats:

    - ``"ijepa"``: one ``.safetensors`` file, architecture and input_spec as JSON metadata (our preferred
      export; ``load`` rebuilds it exactly);
    - ``"hf"``: a directory ``transformers.IJepaModel.from_pretrained`` loads (config.json, model.safetensors,
      preprocessor_config.json);
    - ``"timm"``: a directory ``timm.create_model("local-dir:DIR", pretrained=True)`` loads, or a
      ``.safetensors`` file plus a ``<stem>.json`` sidecar when ``dst`` ends in ``.safetensors``.
    Returns the path written (the directory, or the weights file)."""
    if to == "ijepa":
        return native.save_native(encoder, dst, predictor, source)
    if predictor is not None:
        raise native.InteropError(f"a {to} export holds an encoder only; use to='ijepa' to keep the "
                                  "predictor")
    if to == "hf":
        return hf.save_hf(encoder, dst, source)
    if to == "timm":
        return timm_fmt.save_timm(encoder, dst, source)
    raise native.InteropError(f"to={to!r}: choose 'ijepa', 'hf' or 'timm'")


def convert(src: str | os.PathLike | Mapping[str, Any], dst: str | os.PathLike, to: ExportFormat = "ijepa",
            which: str = "target_encoder", *, with_predictor: bool = False, arch: Any = None,
            img_size: int | tuple[int, int] | None = None, strict: bool = True,
            path: str | os.PathLike | None = None) -> Path:
    """``load`` ``src`` (any format it reads, or a published name with ``path=``) and ``export`` it ``to`` a
    format. ``with_predictor`` keeps the predictor (``to="ijepa"`` only)."""
    out = load(src, which=which, arch=arch, img_size=img_size, with_predictor=with_predictor, strict=strict,
               path=path)
    encoder, predictor = out if isinstance(out, tuple) else (out, None)
    return export(encoder, dst, to, predictor=predictor)


__all__ = ["convert", "export", "load", "read_weights"]
