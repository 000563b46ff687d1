"""End-to-end fine-tuning: a pretrained encoder + a linear head on mean-pooled patch tokens, all trained.

The model is :class:`ClassifierModel` — the encoder's last-layer (layer-normed) patch tokens, averaged, then
``nn.Linear(D, num_classes)`` — which is exactly transformers' ``IJepaForImageClassification`` (it averages
``last_hidden_state`` over the tokens and applies ``classifier``), so :func:`save_hf_classifier` writes a
directory that ``IJepaForImageClassification.from_pretrained`` loads with the same logits.

The recipe is the MAE/BEiT fine-tuning one, minus the heavy augmentation:

- AdamW (betas 0.9, 0.999); no weight decay on biases, norms and other 1-d parameters, nor on ``pos_embed``
  (which stays frozen: I-JEPA's position table is a fixed 2-D sin-cos one);
- layer-wise lr decay: patch embedding (and position table) are layer 0, block ``i`` is layer ``i + 1``, the
  final norm and the head are layer ``L + 1``; a parameter of layer ``l`` gets ``lr * layer_decay ** (L + 1 -
  l)`` (:func:`param_groups_lrd`);
- per-step learning rate: linear warm-up over ``warmup_epochs``, then half-cosine down to ``min_lr``;
  ``lr`` is a *base* rate for 256 images, the peak is ``lr * batch_size / 256`` (MAE's linear scaling rule);
- cross-entropy with ``label_smoothing``; stochastic depth ``drop_path`` (linear in depth, the ViT rule);
  optional gradient-norm clipping; the precision policy's choice (:func:`ijepa.precision.resolve_precision`:
  bf16 where native, fp16 with a gradient scaler on CUDA GPUs without bf16, fp32 elsewhere);
- augmentation: random-resized crop (``crop_scale``) and horizontal flip, on whole batches in memory. Mixup,
  CutMix, RandAugment, random erasing and EMA of the weights are not implemented.

:class:`FinetuneConfig` fields (``ijepa finetune`` flags in brackets):

====================  ===========  ============================================================================
field                 default      meaning
====================  ===========  ============================================================================
epochs                10           passes over the training images [--epochs]
batch_size            128          images per step [--batch-size]
lr                    1e-3         base lr for 256 images; the peak is lr * batch_size / 256 [--lr]
min_lr                1e-6         the cosine's floor [--min-lr]
warmup_epochs         1.0          linear warm-up length, in epochs (fractions allowed) [--warmup-epochs]
weight_decay          0.05         AdamW decoupled weight decay, matrices only [--weight-decay]
layer_decay           0.75         layer-wise lr decay factor, in (0, 1]; 1 = off [--layer-decay]
label_smoothing       0.1          in [0, 1) [--label-smoothing]
drop_path             0.1          stochastic depth of the last block (0 for the first) [--drop-path]
clip_grad             None         max gradient norm, None = no clipping [--clip-grad]
dtype                 "auto"       "auto" (the precision policy), "bf16", "fp16" or "fp32" [--dtype]
seed                  0            head init, shuffling, augmentation, drop-path [--seed]
random_resized_crop   True         random-resized crop to the encoder's input size [--no-augment: off]
crop_scale            (0.35, 1.0)  area fraction range of the crop (MAE uses 0.08; mild for 28 px images)
hflip                 True         random horizontal flips [--no-augment: off]
eval_batch_size       256          images per validation batch
head_init_std         2e-5         head weights ~ trunc-normal(std) (MAE's tiny head init), bias 0
====================  ===========  ============================================================================

What :func:`finetune` writes under ``out_dir``: ``finetune_log.csv`` (one row per epoch: train loss, val loss,
val top-1, lr, seconds), ``metrics.json`` (the config, the per-epoch history, final and best top-1) and
``model/`` (:func:`save_classifier`: ``encoder.safetensors`` — our export, which ``ijepa.load`` reads — plus
``head.safetensors`` and ``classifier.json``). ``ijepa finetune ... --export-hf DIR`` also writes the
transformers layout; ``ijepa.load(DIR)`` reads the encoder back from that too (the classifier is ignored).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..errors import CheckpointError, UnknownFormatError
from ..io import atomic_write_json, read_json, read_safetensors, write_safetensors
from ..precision import PRECISIONS, backward_step, resolve_precision
from .extract import _encoder_device, as_nchw, prepare_images, resolve_input_spec

__all__ = ["ClassifierModel", "FinetuneConfig", "NonFiniteLossError", "cosine_lr", "evaluate_classifier",
           "finetune", "format_history", "layer_id_for", "load_classifier", "load_image_folder",
           "param_groups_lrd", "run_finetune", "save_classifier", "save_hf_classifier", "set_drop_path"]

CLASSIFIER_FORMAT = "ijepa-classifier"
CLASSIFIER_FORMAT_VERSION = 1
# Parameters that are tables rather than weights: no weight decay, and they sit with the patch embedding.
_EMBED_TABLES = ("pos_embed", "cls_token", "mask_token")
LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_top1", "lr", "seconds")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (lower the learning rate, or clip gradients)."""


# ----------------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------------

class ClassifierModel(nn.Module):
    """``head(mean over tokens of encoder(x))``: transformers' ``IJepaForImageClassification``, on our encoder.

    ``encoder``: a :class:`ijepa.models.vit.VisionTransformer` (or any module returning (B, N, D) tokens and
    having ``embed_dim``). ``forward`` takes normalised images (see :func:`ijepa.eval.prepare_images` and
    ``input_spec``) and returns logits (B, num_classes). ``id2label`` (optional) names the classes.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, head_init_std: float = 2e-5,
                 id2label: dict[int, str] | None = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.embed_dim), int(num_classes))
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        self.id2label = dict(id2label) if id2label else None

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def input_spec(self) -> dict[str, Any]:
        return resolve_input_spec(self.encoder)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, D): the mean of the last layer's layer-normed patch tokens."""
        return self.encoder(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth on an existing encoder: block ``i`` of ``L`` drops with ``rate * i / (L - 1)`` (the
    rule ``VisionTransformer(drop_path_rate=...)`` uses at construction)."""
    blocks = list(getattr(encoder, "blocks", []))
    for i, blk in enumerate(blocks):
        dp = getattr(blk, "drop_path", None)
        if dp is None or not hasattr(dp, "p"):
            if rate > 0:
                raise TypeError(f"{type(blk).__name__} has no drop_path module; use drop_path=0")
            continue
        dp.p = float(rate) * i / max(len(blocks) - 1, 1)


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------

@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters; the module docstring documents every field. Invalid values raise
    :class:`ijepa.config.ConfigError` naming the field."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    clip_grad: float | None = None
    dtype: str = "auto"
    seed: int = 0
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    eval_batch_size: int = 256
    head_init_std: float = 2e-5

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> FinetuneConfig:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"finetune.{name} must be {rule}, got {getattr(self, name)!r}")

        def number(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "a finite number")
            return float(v)

        for name in ("epochs", "batch_size", "eval_batch_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(name, "an integer")
        if self.epochs < 1:
            raise bad("epochs", ">= 1")
        if self.batch_size < 1:
            raise bad("batch_size", ">= 1")
        if self.eval_batch_size < 1:
            raise bad("eval_batch_size", ">= 1")
        for name in ("lr", "min_lr", "warmup_epochs", "weight_decay", "drop_path", "label_smoothing",
                     "head_init_std"):
            if number(name) < 0:
                raise bad(name, ">= 0")
        if self.min_lr > self.lr:
            raise ConfigError(f"finetune.min_lr must be <= finetune.lr ({self.lr!r}), got {self.min_lr!r}")
        if self.warmup_epochs > self.epochs:
            raise bad("warmup_epochs", f"<= epochs ({self.epochs})")
        if not 0 < number("layer_decay") <= 1:
            raise bad("layer_decay", "in (0, 1]")
        if self.label_smoothing >= 1:
            raise bad("label_smoothing", "in [0, 1)")
        if self.drop_path >= 1:
            raise bad("drop_path", "in [0, 1)")
        if self.clip_grad is not None and number("clip_grad") <= 0:
            raise bad("clip_grad", "> 0 (or None for no clipping)")
        if self.dtype not in PRECISIONS:
            raise bad("dtype", " | ".join(PRECISIONS))
        for name in ("random_resized_crop", "hflip"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        lo_hi = self.crop_scale
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise bad("crop_scale", "(min, max) with 0 < min <= max <= 1")
        return self

    def peak_lr(self) -> float:
        """The learning rate at the end of warm-up: ``lr * batch_size / 256``."""
        return self.lr * self.batch_size / 256

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown finetune field(s): {', '.join(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------
# optimiser groups and schedule
# ----------------------------------------------------------------------------------------------------------

def layer_id_for(name: str, num_layers: int) -> int:
    """Layer of a parameter for lr decay: patch embedding and position/token tables 0, ``blocks.i`` ``i + 1``,
    everything else (final norm, head) ``num_layers + 1``. A leading ``encoder.`` is ignored."""
    n = name.removeprefix("encoder.")
    if n.startswith("patch_embed.") or n in _EMBED_TABLES:
        return 0
    m = re.match(r"blocks\.(\d+)\.", n)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def _no_weight_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or name.removeprefix("encoder.") in _EMBED_TABLES


def param_groups_lrd(model: nn.Module, weight_decay: float, layer_decay: float,
                     num_layers: int | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay (BEiT / MAE).

    One group per (layer, decay or not), ordered by layer, each ``{"params", "names", "weight_decay",
    "lr_scale", "layer_id"}``: ``lr_scale = layer_decay ** (num_layers + 1 - layer_id)`` (multiply the
    scheduled lr by it), ``weight_decay`` 0 for biases, norms, other 1-d parameters and position/token
    tables. Frozen parameters (``requires_grad=False``) are left out. ``num_layers``: the encoder's block count
    (``model.encoder.blocks`` or ``model.blocks`` when not given).
    """
    if num_layers is None:
        enc = getattr(model, "encoder", model)
        num_layers = len(getattr(enc, "blocks", []))
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id_for(name, num_layers)
        no_wd = _no_weight_decay(name, p)
        g = groups.setdefault((lid, no_wd), {
            "params": [], "names": [], "weight_decay": 0.0 if no_wd else float(weight_decay),
            "lr_scale": float(layer_decay) ** (num_layers + 1 - lid), "layer_id": lid})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1]))]


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps`` (the first step already gets ``peak / warmup_steps``),
    then half-cosine from ``peak`` to ``floor`` at ``total_steps``. (``ijepa.train.schedules`` has the
    pretraining schedules; evaluation does not import the training stack.)"""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------------------------------------
# data in memory
# ----------------------------------------------------------------------------------------------------------

def _as_nchw(images: Any) -> torch.Tensor:
    """Raw images (any layout :func:`prepare_images` takes) -> (N, C, H, W), dtype kept (uint8 stays uint8)."""
    x = as_nchw(images)
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    return x


def _as_labels(y: Any, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long().reshape(-1).cpu()
    if len(t) != n:
        raise ValueError(f"{n} {what} images but {len(t)} labels")
    if n and t.min() < 0:
        raise ValueError(f"{what} labels must be class indices >= 0, got {int(t.min())}")
    return t


class _Augment:
    """Batch augmentation on the device: random-resized crop to the input size and/or horizontal flip, then
    the encoder's preprocessing (:func:`prepare_images`: channels, size, normalisation)."""

    def __init__(self, spec: dict, cfg: FinetuneConfig, generator: torch.Generator):
        from ..data.transforms import BatchRandomResizedCrop

        self.spec, self.g, self.hflip = spec, generator, cfg.hflip
        self.rrc = (BatchRandomResizedCrop(spec["image_size"], scale=cfg.crop_scale, horizontal_flip=cfg.hflip)
                    if cfg.random_resized_crop else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.rrc is not None:
            x = self.rrc(x, generator=self.g)  # flips too, when hflip
        elif self.hflip:
            flip = (torch.rand(len(x), generator=self.g) < 0.5).to(x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return prepare_images(x, self.spec)


# ----------------------------------------------------------------------------------------------------------
# training and evaluation
# ----------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_classifier(model: nn.Module, images: Any, labels: Any, *, input_spec: dict | None = None,
                        batch_size: int = 256, device: torch.device | str | None = None, dtype: str = "auto"
                        ) -> dict[str, float]:
    """``{"top1", "loss"}`` (plain cross-entropy) of ``model`` on raw ``images`` (uint8 or [0, 1] floats, any
    layout :func:`prepare_images` takes), preprocessed with ``input_spec`` (default: the encoder's). The
    model's train/eval mode is restored afterwards."""
    x_all = _as_nchw(images)
    y_all = _as_labels(labels, len(x_all), "evaluation")
    if len(x_all) == 0:
        return {"top1": float("nan"), "loss": float("nan")}
    dev = torch.device(device) if device is not None else _encoder_device(model)
    spec = resolve_input_spec(getattr(model, "encoder", model), input_spec)
    was_training = model.training
    precision = resolve_precision(dtype, dev)
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)  # summed on the device: no sync per batch
    try:
        for i in range(0, len(x_all), batch_size):
            x = prepare_images(x_all[i:i + batch_size].to(dev, non_blocking=True), spec)
            y = y_all[i:i + batch_size].to(dev)
            with precision.autocast():
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    finally:
        model.train(was_training)
    return {"top1": correct.item() / len(x_all), "loss": loss_sum.item() / len(x_all)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def finetune(encoder: nn.Module, train_images: Any, train_labels: Any, val_images: Any, val_labels: Any,
             cfg: FinetuneConfig | None = None, out_dir: str | os.PathLike | None = None,
             input_spec: dict | None = None, *, num_classes: int | None = None,
             id2label: dict[int, str] | None = None, device: torch.device | str | None = None,
             progress: bool = True, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``encoder`` with a new linear head (:class:`ClassifierModel`) end to end.

    ``train_images`` / ``val_images``: raw images held in memory — uint8 (0..255) or float in [0, 1], shaped
    (N, H, W), (N, C, H, W) or (N, H, W, C); each batch is augmented (training only) and preprocessed on the
    device with ``input_spec`` (default: the encoder's, see :func:`ijepa.eval.resolve_input_spec`), exactly as
    feature extraction preprocesses. Labels are class indices; ``num_classes`` defaults to the largest + 1.

    The encoder is trained in place (pass a copy to keep the original) on ``device`` (default: where the
    encoder is). ``cfg``: :class:`FinetuneConfig`. With ``out_dir``, writes ``finetune_log.csv``,
    ``metrics.json`` (plus ``meta``) and the final model under ``model/`` (:func:`save_classifier`).

    Returns ``{"train_loss": [per epoch], "val_top1": [per epoch], "val_loss": [...], "final_val_top1",
    "best_val_top1", "best_epoch", "history" (rows of the log), "peak_lr", "steps", "seconds", "n_train",
    "n_val", "num_classes", "config", "model"}`` (accuracies as fractions; ``model`` in eval mode).
    """
    cfg = (cfg or FinetuneConfig()).validate()
    t0 = time.perf_counter()
    x_tr, x_va = _as_nchw(train_images), _as_nchw(val_images)
    y_tr = _as_labels(train_labels, len(x_tr), "training")
    y_va = _as_labels(val_labels, len(x_va), "validation")
    if len(x_tr) == 0:
        raise ValueError("no training images")
    seen = int(max(y_tr.max().item(), y_va.max().item() if len(y_va) else 0)) + 1
    C = int(num_classes) if num_classes is not None else (len(id2label) if id2label else seen)
    if seen > C:
        raise ValueError(f"labels go up to {seen - 1} but num_classes is {C}")
    dev = torch.device(device) if device is not None else _encoder_device(encoder)
    spec = resolve_input_spec(encoder, input_spec)
    out = Path(out_dir) if out_dir is not None else None

    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seeded run, without disturbing the caller's RNG streams
        torch.manual_seed(cfg.seed)
        model = ClassifierModel(encoder, C, head_init_std=cfg.head_init_std, id2label=id2label).to(dev)
        for name, p in model.named_parameters():
            # everything trains except the fixed sin-cos position table
            p.requires_grad_(name.removeprefix("encoder.") != "pos_embed")
        set_drop_path(encoder, cfg.drop_path)
        result = _train(model, x_tr, y_tr, x_va, y_va, cfg, spec, dev, out, progress)

    model.eval()
    result.update(seconds=time.perf_counter() - t0, n_train=len(x_tr), n_val=len(x_va), num_classes=C,
                  config=cfg.to_dict(), input_spec=spec)
    if out is not None:
        save_classifier(model, out / "model", config=cfg.to_dict())
        metrics = {**(meta or {}), **{k: v for k, v in result.items() if k != "model"}}
        (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
    result["model"] = model
    return result


@torch.inference_mode(False)
@torch.enable_grad()
def _train(model: ClassifierModel, x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor,
           y_va: torch.Tensor, cfg: FinetuneConfig, spec: dict, dev: torch.device, out: Path | None,
           progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm  # imported here so that importing ijepa.eval stays light

    groups = param_groups_lrd(model, cfg.weight_decay, cfg.layer_decay)
    fast = {"fused": True} if dev.type == "cuda" else {"foreach": True}  # as pretraining's optimizer
    opt = torch.optim.AdamW(groups, lr=cfg.peak_lr(), betas=(0.9, 0.999), **fast)
    params = [p for g in groups for p in g["params"]]
    precision = resolve_precision(cfg.dtype, dev)
    scaler = precision.grad_scaler()
    g = torch.Generator().manual_seed(cfg.seed)
    augment = _Augment(spec, cfg, g)
    n = len(x_tr)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    log_file = None
    writer = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        log_file = open(out / "finetune_log.csv", "w", newline="")  # noqa: SIM115 (closed in finally)
        writer = csv.DictWriter(log_file, fieldnames=LOG_COLUMNS)
        writer.writeheader()
    history: list[dict[str, Any]] = []
    step, lr = 0, 0.0
    t_start = time.perf_counter()
    bar = tqdm(total=total, disable=not progress, desc="finetune", unit="step", dynamic_ncols=True)
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=g)
            loss_sum = torch.zeros((), device=dev)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                x = augment(x_tr[idx].to(dev, non_blocking=True))
                y = y_tr[idx].to(dev, non_blocking=True)
                lr = cosine_lr(step, total, warmup, cfg.peak_lr(), cfg.min_lr)
                for group in opt.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                with precision.autocast():
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                backward_step(loss, opt, scaler, clip_grad=cfg.clip_grad, params=params)
                loss_sum += loss.detach() * len(idx)
                step += 1
                bar.update(1)
                if step % 20 == 0 or step == total:  # a sync per step would stall a GPU
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(f"training loss is {loss.item()} at step {step} (epoch "
                                                 f"{epoch}); lower --lr or set --clip-grad")
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
            train_loss = loss_sum.item() / n
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(f"training loss is {train_loss} in epoch {epoch}; lower --lr or set "
                                         "--clip-grad")
            val = evaluate_classifier(model, x_va, y_va, input_spec=spec, batch_size=cfg.eval_batch_size,
                                      device=dev, dtype=cfg.dtype)
            row = {"epoch": epoch, "step": step, "train_loss": train_loss, "val_loss": val["loss"],
                   "val_top1": val["top1"], "lr": lr, "seconds": round(time.perf_counter() - t_start, 2)}
            history.append(row)
            if writer is not None:
                writer.writerow(row)
                log_file.flush()
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val_top1=f"{100 * val['top1']:.1f}%")
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    tops = [r["val_top1"] for r in history]
    finite = [t if math.isfinite(t) else -1.0 for t in tops]
    best = int(np.argmax(finite))
    return {"train_loss": [r["train_loss"] for r in history], "val_top1": tops,
            "val_loss": [r["val_loss"] for r in history], "final_val_top1": tops[-1],
            "best_val_top1": tops[best], "best_epoch": best + 1, "history": history,
            "peak_lr": cfg.peak_lr(), "steps": step, "precision": str(precision)}


# ----------------------------------------------------------------------------------------------------------
# saving and loading
# ----------------------------------------------------------------------------------------------------------

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
    from ..interop import export

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
                       id2label: dict[int, str] | None = None, source: str | None = None) -> Path:
    """Write a directory ``transformers.IJepaForImageClassification.from_pretrained(dst)`` loads with no code
    of ours: ``config.json`` (the encoder fields of ``ijepa.interop.hf.config_for`` plus the labels),
    ``model.safetensors`` (the encoder under ``ijepa.`` in the hub layout, the head as ``classifier.``) and
    ``preprocessor_config.json``. ``ijepa.load(dst)`` reads the encoder back (the classifier is ignored)."""
    from ..interop.hf import (
        HF_BASE_PREFIX,
        HF_SOURCE_METADATA_KEY,
        config_for,
        preprocessor_config_for,
        to_hf,
    )

    d = Path(dst)
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"{d} exists and is not a directory; a transformers export is a directory")
    d.mkdir(parents=True, exist_ok=True)
    enc = model.encoder
    labels = _id2label(model, id2label)
    tensors = {HF_BASE_PREFIX + k: v for k, v in to_hf(enc.state_dict()).items()}
    tensors["classifier.weight"] = model.head.weight
    tensors["classifier.bias"] = model.head.bias
    stated = source or f"fine-tuned classifier ({getattr(enc, 'source', None) or 'ijepa encoder'})"
    write_safetensors(tensors, d / "model.safetensors", {"format": "pt", HF_SOURCE_METADATA_KEY: stated})
    cfg = config_for(enc)
    cfg.update(architectures=["IJepaForImageClassification"], num_labels=len(labels),
               id2label={str(k): v for k, v in labels.items()}, label2id={v: k for k, v in labels.items()},
               problem_type="single_label_classification")
    atomic_write_json(d / "config.json", cfg)
    atomic_write_json(d / "preprocessor_config.json", preprocessor_config_for(resolve_input_spec(enc)))
    return d


def load_classifier(src: str | os.PathLike) -> ClassifierModel:
    """Read a :func:`save_classifier` directory or a transformers ``IJepaForImageClassification`` directory
    (e.g. from :func:`save_hf_classifier`) into a :class:`ClassifierModel` (eval mode)."""
    from ..interop import load

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


# ----------------------------------------------------------------------------------------------------------
# the `ijepa finetune` driver
# ----------------------------------------------------------------------------------------------------------

def load_image_folder(root: str | os.PathLike, input_spec: dict, *, classes: list[str] | None = None,
                      progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageNet-style folder (``root/<class>/<image>``) once into memory: uint8 (N, C, H, W) at the
    encoder's input size (short side resized, bicubic, then centre-cropped), labels, class names. Unreadable
    images are skipped with a warning. ``classes``: the class list to match (a val split must have the
    training split's classes). Memory is N·C·H·W bytes: meant for up to ~10^5 images at 224 px."""
    from torchvision import transforms as T

    from ..data.datasets import ImageFolderDataset

    spec = resolve_input_spec(None, input_spec)
    h, w = spec["image_size"]
    mode = "L" if spec["in_chans"] == 1 else "RGB"
    tf = T.Compose([T.Resize(max(h, w), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((h, w)),
                    T.PILToTensor()])
    ds = ImageFolderDataset(root, tf, mode=mode)
    if classes is not None and list(ds.classes) != list(classes):
        raise FileNotFoundError(f"{root}: class folders {ds.classes} differ from the training split's {classes}")
    from tqdm.auto import tqdm

    c = 1 if mode == "L" else 3
    images = torch.empty((len(ds), c, h, w), dtype=torch.uint8)
    labels = torch.empty(len(ds), dtype=torch.long)
    n = 0
    for i in tqdm(range(len(ds)), disable=not progress, desc=f"decoding {Path(root).name}", unit="img"):
        item = ds[i]
        if item is None:
            continue
        images[n], labels[n] = item[0], item[1]
        n += 1
    if n == 0:
        raise FileNotFoundError(f"{root}: no readable images")
    return images[:n].clone() if n < len(ds) else images, labels[:n].clone(), list(ds.classes)


def _folder_splits(images_dir: Path, spec: dict, val_fraction: float, seed: int, progress: bool):
    train_dir = images_dir / "train"
    val_dir = next((images_dir / v for v in ("val", "test") if (images_dir / v).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        xtr, ytr, classes = load_image_folder(train_dir, spec, progress=progress)
        xva, yva, _ = load_image_folder(val_dir, spec, classes=classes, progress=progress)
        return xtr, ytr, xva, yva, classes, f"{train_dir.name} / {val_dir.name}"
    from .linear import stratified_split

    if not 0 < val_fraction < 1:
        raise ConfigError(f"finetune.val_fraction must be in (0, 1), got {val_fraction!r}")
    x, y, classes = load_image_folder(images_dir, spec, progress=progress)
    tr, va = stratified_split(y, val_fraction, seed)
    return x[tr], y[tr], x[va], y[va], classes, f"stratified {val_fraction:g} held out"


def run_finetune(src: str | os.PathLike, out_dir: str | os.PathLike, *, cfg: FinetuneConfig | None = None,
                 dataset: str = "fashion_mnist", images_dir: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None, limit: int | None = None, which: str = "target_encoder",
                 path: str | None = None, device: str = "auto", export_hf: str | os.PathLike | None = None,
                 val_fraction: float = 0.1, progress: bool = True) -> dict[str, Any]:
    """``ijepa finetune``: load ``src`` (anything ``ijepa.load`` reads), fine-tune it on Fashion-MNIST (train
    on the training set, validate on the 10,000 test images) or on ``images_dir`` (class sub-folders; with
    ``train/`` and ``val/`` (or ``test/``) sub-folders those are the splits, else ``val_fraction`` of each
    class is held out), write everything under ``out_dir`` and, with ``export_hf``, a transformers
    ``IJepaForImageClassification`` folder. ``limit``: the first N images of each Fashion-MNIST split, or a
    seeded random N of each folder split. Returns :func:`finetune`'s result plus the run's description."""
    from ..device import resolve_device
    from ..interop import load

    cfg = (cfg or FinetuneConfig()).validate()
    if limit is not None and limit < 1:
        raise ConfigError(f"finetune.limit must be >= 1, got {limit!r}")
    encoder = load(src, which=which, path=path)
    spec = resolve_input_spec(encoder)
    if images_dir is not None:
        xtr, ytr, xva, yva, classes, split = _folder_splits(Path(images_dir), spec, val_fraction, cfg.seed,
                                                            progress)
        name = Path(images_dir).name
        if limit:
            g = torch.Generator().manual_seed(cfg.seed)
            itr = torch.randperm(len(xtr), generator=g)[:limit].sort().values
            iva = torch.randperm(len(xva), generator=g)[:limit].sort().values
            xtr, ytr, xva, yva = xtr[itr], ytr[itr], xva[iva], yva[iva]
    elif dataset == "fashion_mnist":
        from ..data.fashion_mnist import CLASSES, load_fashion_mnist

        xtr, ytr = load_fashion_mnist(root, train=True)
        xva, yva = load_fashion_mnist(root, train=False)
        if limit:
            xtr, ytr, xva, yva = xtr[:limit], ytr[:limit], xva[:limit], yva[:limit]
        classes, split, name = list(CLASSES), "train / test", "fashion_mnist"
    else:
        raise ConfigError(f"unknown dataset {dataset!r} (fashion_mnist, or pass an image folder)")
    id2label = dict(enumerate(classes))
    meta = {"src": str(src), "source": getattr(encoder, "source", ""), "dataset": name, "split": split,
            "classes": classes}
    res = finetune(encoder, xtr, ytr, xva, yva, cfg, out_dir, num_classes=len(classes), id2label=id2label,
                   device=resolve_device(device), progress=progress, meta=meta)
    res.update(meta)
    res["out_dir"] = str(out_dir)
    if export_hf:
        res["export_hf"] = str(save_hf_classifier(res["model"], export_hf, id2label))
        metrics_path = Path(out_dir) / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics["export_hf"] = res["export_hf"]
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return res


def format_history(res: dict[str, Any]) -> str:
    """The per-epoch table ``ijepa finetune`` prints."""
    lines = [f"{'epoch':>5}  {'train loss':>10}  {'val loss':>8}  {'val top-1':>9}"]
    for r in res["history"]:
        lines.append(f"{r['epoch']:>5}  {r['train_loss']:>10.4f}  {r['val_loss']:>8.4f}  "
                     f"{100 * r['val_top1']:>8.2f}%")
    return "\n".join(lines)
