"""The fine-tuning hyper-parameters: :class:`FinetuneConfig` (the package docstring documents every field)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ...errors import ConfigError
from ...precision import PRECISIONS


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (``ijepa finetune`` flags in brackets). Invalid values raise
    ``ijepa.errors.ConfigError`` naming the field.

    Attributes:
        epochs: passes over the training images [--epochs].
        batch_size: images per step [--batch-size].
        lr: base lr for 256 images; the peak is lr * batch_size / 256 [--lr].
        min_lr: the cosine's floor [--min-lr].
        warmup_epochs: linear warm-up length, in epochs (fractions allowed) [--warmup-epochs].
        weight_decay: AdamW decoupled weight decay, matrices only [--weight-decay].
        layer_decay: layer-wise lr decay factor, in (0, 1]; 1 = off [--layer-decay].
        label_smoothing: in [0, 1) [--label-smoothing].
        drop_path: stochastic depth of the last block (0 for the first) [--drop-path].
        clip_grad: max gradient norm, None = no clipping [--clip-grad].
        dtype: "auto" (the precision policy), "bf16", "fp16" or "fp32" [--dtype].
        seed: head init, shuffling, augmentation, drop-path [--seed].
        random_resized_crop: random-resized crop to the encoder's input size [--no-augment: off].
        crop_scale: area fraction range of the crop (MAE uses 0.08; mild for 28 px images).
        hflip: random horizontal flips [--no-augment: off].
        eval_batch_size: images per validation batch.
        head_init_std: head weights ~ trunc-normal(std) (MAE's tiny head init), bias 0.
    """

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
