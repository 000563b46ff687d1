"""End-to-end fine-tuning: a pretrained encoder + a linear head on mean-pooled patch tokens, all trained.

The model is :class:`ClassifierModel` — the encoder's last-layer (layer-normed) patch tokens, averaged, then
``nn.Linear(D, num_classes)`` — which is exactly transformers' ``IJepaForImageClassification`` (it averages
``last_hidden_state`` over the tokens and applies ``classifier``), so :func:`save_hf_classifier` writes a
directory that ``IJepaForImageClassification.from_pretrained`` loads with the same logits.

The recipe is the MAE/BEiT fine-tuning one, minus the heavy augmentation:

- AdamW (betas 0.9, 0.999); no weight decay on biases, norms and other 1-d parameters (the one rule of
  :func:`ijepa.optim.no_weight_decay`); ``pos_embed`` stays frozen (I-JEPA's position table is a fixed 2-D sin-cos
  one);
- layer-wise lr decay: patch embedding (and position table) are layer 0, block ``i`` is layer ``i + 1``, the
  final norm and the head are layer ``L + 1``; a parameter of layer ``l`` gets ``lr * layer_decay ** (L + 1 -
  l)`` (:func:`ijepa.optim.param_groups`);
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

The parts: :mod:`.config` (the fields), :mod:`.model` (the classifier), :mod:`.loop` (training and evaluation),
:mod:`.files` (saving and loading), :mod:`.run` (the command's driver: data, splits, exports).
"""


from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import NonFiniteLossError
from ...optim import layer_id, param_groups, warmup_cosine
from .config import FinetuneConfig
from .files import load_classifier, save_classifier, save_hf_classifier
from .loop import evaluate_classifier, finetune
from .model import ClassifierModel, set_drop_path
from .run import format_history, load_image_folder, run_finetune

__all__ = ["ClassifierModel", "FinetuneConfig", "NonFiniteLossError", "cosine_lr", "evaluate_classifier",
           "finetune", "format_history", "layer_id_for", "load_classifier", "load_image_folder",
           "param_groups_lrd", "run_finetune", "save_classifier", "save_hf_classifier", "set_drop_path"]


# The names this module has always offered, on the shared pieces of :mod:`ijepa.optim` (no copies of them).
layer_id_for = layer_id


def param_groups_lrd(model: nn.Module, weight_decay: float, layer_decay: float,
                     num_layers: int | None = None) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise lr decay: :func:`ijepa.optim.param_groups` with ``layer_decay``."""
    return param_groups(model, weight_decay, layer_decay=layer_decay, num_layers=num_layers)


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float = 0.0) -> float:
    """The fine-tuning schedule: :func:`ijepa.optim.warmup_cosine` whose first step already takes one warm-up
    increment."""
    return warmup_cosine(step, total_steps, warmup_steps, peak, final=floor, warmup_offset=1)
