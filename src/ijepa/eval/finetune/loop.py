"""Fine-tuning's training loop and its evaluation, on images held in memory and augmented as whole batches."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...data.preprocess import as_nchw, prepare_images, resolve_input_spec
from ...data.transforms import BatchRandomResizedCrop
from ...errors import NonFiniteLossError
from ...optim import param_groups, set_lr, warmup_cosine
from ...precision import backward_step, resolve_precision
from ..extract import _encoder_device
from .config import FinetuneConfig
from .files import save_classifier
from .model import ClassifierModel, set_drop_path

LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_top1", "lr", "seconds")


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
    """Fine-tune ``encoder`` with a new linear head (``ClassifierModel``) end to end.

    The encoder is trained in place (pass a copy to keep the original).

    Args:
        encoder: the encoder to fine-tune.
        train_images: raw images held in memory — uint8 (0..255) or float in [0, 1], shaped (N, H, W),
            (N, C, H, W) or (N, H, W, C); each batch is augmented and preprocessed on the device with
            ``input_spec``, exactly as feature extraction preprocesses.
        train_labels: class indices.
        val_images: as ``train_images`` (not augmented).
        val_labels: class indices.
        cfg: the hyper-parameters (default: ``FinetuneConfig()``).
        out_dir: where to write ``finetune_log.csv``, ``metrics.json`` (plus ``meta``) and the final model under
            ``model/`` (``save_classifier``); None writes nothing.
        input_spec: how to preprocess (default: the encoder's, see
            ``ijepa.data.preprocess.resolve_input_spec``).
        num_classes: default: the number of ``id2label`` entries, else the largest label + 1.
        id2label: class names, kept with the model.
        device: where to train (default: where the encoder is).
        progress: show progress bars.
        meta: extra entries for ``metrics.json``.

    Returns:
        dict: ``{"train_loss": [per epoch], "val_top1": [per epoch], "val_loss": [...], "final_val_top1",
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
    groups = param_groups(model, cfg.weight_decay, layer_decay=cfg.layer_decay)
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
                lr = warmup_cosine(step, total, warmup, cfg.peak_lr(), final=cfg.min_lr, warmup_offset=1)
                set_lr(opt, lr)
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
