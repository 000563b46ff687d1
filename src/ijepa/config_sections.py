"""The pretraining config's sections: one dataclass each (``meta``, ``data``, ``mask``, ``optimization``,
``loss``, ``logging``), every key with its default and its meaning, and each section's check of its own values.

:mod:`ijepa.config` puts them together into a :class:`~ijepa.config.Config` and loads YAML into it; this module,
like that one, imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

from .config_fields import _coerce, _f, _in_range, _positive, _range_pair
from .errors import ConfigError

# (width, heads) of each encoder size: models/vit.py's VIT_SIZES, repeated so this module stays torch-free
# (tests/test_config.py checks they agree)
ENCODER_WIDTH_HEADS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12), "vit_large": (1024, 16),
                       "vit_huge": (1280, 16), "vit_giant": (1408, 16), "vit_gigantic": (1664, 16)}
ENCODER_NAMES = tuple(ENCODER_WIDTH_HEADS)
# logging.tracker's choices (train/trackers.py)
TRACKERS = ("wandb", "mlflow", "tensorboard")


def tracker_names(value: str | list | tuple | None) -> tuple[str, ...]:
    """``logging.tracker`` as given (a name, comma-separated names, a list, or none) -> the trackers, once each."""
    items = [value] if isinstance(value, str) else list(value or ())
    names: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name in ("", "none"):
                continue
            if name not in TRACKERS:
                raise ConfigError(f"logging.tracker: '{name}' is not one of {', '.join(TRACKERS)} or none")
            if name not in names:
                names.append(name)
    return tuple(names)


@dataclass
class MetaConfig:
    """The ``meta`` section: the model, precision, seed, device and checkpoint to resume from."""

    model_name: str = _f("vit_base", "encoder size: " + ", ".join(ENCODER_NAMES))
    enc_depth: int | None = _f(None, "override the size's number of blocks (null: the size's own)")
    enc_embed_dim: int | None = _f(None, "override the size's width (null: the size's own; must divide by the "
                                         "number of heads)")
    enc_num_heads: int | None = _f(None, "override the size's attention heads (null: the size's own)")
    enc_mlp_ratio: float | None = _f(None, "override the size's MLP hidden width / width (null: the size's own, 4)")
    pred_depth: int = _f(12, "predictor blocks")
    pred_emb_dim: int = _f(384, "predictor width")
    pred_num_heads: int | None = _f(None, "predictor attention heads (null: the encoder's, as the reference)")
    pred_one_pass: bool = _f(False, "run the predictor once per image with every target block's mask tokens "
                                    "(block-masked attention; context tokens do not see mask tokens) instead of "
                                    "once per target block as the reference: fewer predictor tokens")
    init_std: float = _f(0.02, "std of the encoder's truncated-normal weight init (the reference's 0.02; each "
                               "block's output projections are then scaled by 1/sqrt(2·layer) as the reference)")
    drop_path: float = _f(0.0, "stochastic depth rate of the context encoder (linear over blocks)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = _f(
        "auto", "auto: bf16 autocast where the device runs it natively (CUDA GPUs with bf16, CPUs with avx512_bf16 "
                "or AMX), fp16 autocast with a gradient scaler on CUDA GPUs without bf16 (T4, V100, P100), fp32 "
                "elsewhere; bf16 / fp16 / fp32 force one (a dtype the device would emulate warns, with the "
                "measured matmul throughput). ijepa/precision.py")
    load_checkpoint: bool = _f(True, "resume from the run folder's latest checkpoint when one exists")
    read_checkpoint: str | None = _f(None, "resume from this checkpoint file instead of the run folder's latest")
    allow_config_change: bool = _f(False, "resume a checkpoint written with other values of keys that change the run "
                                          "(ijepa train --allow-config-change): the new values apply from its step "
                                          "and config_changes.jsonl records them; otherwise such a resume is refused")
    seed: int = _f(0, "random seed (weights, data order, masks; each rank derives its own)")
    compile: bool = _f(False, "torch.compile the encoders and predictor")
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    grad_checkpointing: bool = _f(False, "activation checkpointing in the context encoder (huge/gigantic)")
    parallel: Literal["ddp", "fsdp"] = _f(
        "ddp", "how several processes share the work: ddp, a whole copy of the weights, gradients and AdamW state "
               "per process, single-file checkpoints; fsdp, FSDP2 shards all three (and the target encoder) over "
               "the processes, each block a unit, sharded checkpoints (<tag>-latest.dcp folders; `ijepa convert "
               "RUN FILE --to checkpoint` makes the single file). docs/distributed.md")
    threads: int | None = _f(None, "CPU threads for torch (null: torch's default)")
    flush_denormal: bool = _f(True, "CPU: flush denormal floats to zero (FTZ/DAZ); without it fp32 steps slow down "
                                    "as training goes on (docs/performance.md, benchmarks/denormals.py)")

    def check(self) -> None:
        if self.model_name not in ENCODER_NAMES:
            raise ConfigError(f"meta.model_name: unknown encoder '{self.model_name}' "
                              f"(choose from {', '.join(ENCODER_NAMES)})")
        _positive("meta", self, "enc_depth", "enc_embed_dim", "enc_num_heads", "enc_mlp_ratio", "pred_depth",
                  "pred_emb_dim", "pred_num_heads", "threads", "init_std")
        _in_range("meta.drop_path", self.drop_path, 0.0, 1.0, hi_open=True)
        dim, heads = ENCODER_WIDTH_HEADS[self.model_name]
        dim, heads = self.enc_embed_dim or dim, self.enc_num_heads or heads
        if dim % heads:  # name the key the user set: heads alone, or the width
            key = "enc_num_heads" if self.enc_embed_dim is None else "enc_embed_dim"
            raise ConfigError(f"meta.{key}: width {dim} does not divide into {heads} heads")
        pred_heads = self.pred_num_heads or heads
        if self.pred_emb_dim % pred_heads:
            raise ConfigError(f"meta.pred_emb_dim: width {self.pred_emb_dim} does not divide into {pred_heads} heads "
                              "(set meta.pred_num_heads)")
        if self.device != "auto" and not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"meta.device: '{self.device}' is not auto, cpu, cuda or cuda:N")


@dataclass
class DataConfig:
    """The ``data`` section: the dataset, its loader, crops and augmentation."""

    dataset: Literal["imagefolder", "folder", "shards", "fashion_mnist", "hf"] = _f(
        "imagefolder", "imagefolder: class sub-folders (ImageNet layout, <class>/**/<image>), labelled by class; "
                       "folder: every image, unlabelled; both under root_path/image_folder, and where that has "
                       "split folders (train/, val/ or test/) training reads train/ (data/layout.py). "
                       "shards: WebDataset-style tar shards under root_path/image_folder (`ijepa shards` makes them); "
                       "fashion_mnist: the IDX files under root_path (default /usr/share/datasets/fashion-mnist); "
                       "hf: a Hugging Face dataset, data.hf_path (data/hf.py; needs pip install 'ijepa[hf]')")
    root_path: str | None = _f(None, "dataset root; for shards also a URL fsspec reads (s3://, gs://, http(s)://; "
                                     "docs/data.md)")
    image_folder: str = _f("", "sub-folder of root_path (the reference's key)")
    hf_path: str | None = _f(None, "hf: a Hub dataset id (e.g. frgfm/imagenette) or a local folder: one written by "
                                   "save_to_disk, or of parquet or arrow files")
    hf_name: str | None = _f(None, "hf: the dataset's configuration name on the Hub (e.g. 320px for "
                                   "frgfm/imagenette)")
    split: str = _f("train", "hf: the split to train on (one of the dataset's own: train, validation...)")
    image_column: str | None = _f(None, "hf: the images' column (null: the column with the Image feature)")
    label_column: str | None = _f(None, "hf: the labels' column (null: the column with the ClassLabel feature, "
                                        "if any; else the images are unlabelled)")
    streaming: bool = _f(False, "hf: read the split as a stream instead of map-style: split across processes "
                                "example by example, decoded by num_workers processes, resumed exactly (how: "
                                "docs/data.md)")
    hf_shuffle_buffer: int = _f(1000, "hf with streaming: the examples of the stream's shuffle buffer (0: the "
                                      "stream's order; a resume then starts from the stream's saved state instead "
                                      "of reading the epoch again up to the checkpoint)")
    follow_symlinks: bool = _f(False, "folders: also read folders reached through links to directories, each real "
                                      "directory once (never one of the dataset's own again, so a `..` link or two "
                                      "links to each other cannot repeat images or loop); links to image files are "
                                      "always read")
    batch_size: int = _f(128, "images per process per step")
    num_workers: int = _f(8, "DataLoader worker processes (folders; the in-memory Fashion-MNIST path uses none)")
    pin_mem: bool = _f(True, "pin host memory for faster copies to the GPU")
    crop_size: int = _f(224, "training resolution (square crops)")
    crop_scale: tuple[float, float] = _f((0.3, 1.0), "RandomResizedCrop area range")
    use_horizontal_flip: bool = _f(False, "random horizontal flips")
    use_color_distortion: bool = _f(False, "colour jitter + random grayscale, as the reference's")
    color_jitter_strength: float = _f(0.0, "colour jitter strength")
    use_gaussian_blur: bool = _f(False, "random Gaussian blur")
    in_chans: int = _f(3, "image channels the encoder takes (1 for grayscale; a folder of colour images needs 3)")
    mean: tuple[float, ...] | None = _f(None, "normalisation mean (null: ImageNet's, or the dataset's own)")
    std: tuple[float, ...] | None = _f(None, "normalisation std (null: ImageNet's, or the dataset's own)")
    limit: int | None = _f(None, "use only the first N images (smoke tests, quick looks)")
    max_image_pixels: int | None = _f(100_000_000, "folders and shards: images with more pixels (width x height, "
                                                   "read from the header) are skipped, counted and named instead of "
                                                   "decoded (null: no limit; data/decode.py)")
    gpu_augment: bool = _f(False, "folders and shards: the loader workers only decode each image (into a uint8 "
                                  "canvas, see gpu_augment_size) and the batch's crops, flips, colour jitter and "
                                  "blur run on the training device in one call, with the worker path's "
                                  "distribution of crop boxes (data/gpu_augment.py; benchmarks/loader.py measures "
                                  "the CPU it saves). The in-memory Fashion-MNIST path already crops on the "
                                  "device: there it changes nothing")
    gpu_augment_size: int | None = _f(None, "with gpu_augment: the longer side the workers shrink larger images "
                                            "to, and the side of the canvas they send (null: max(512, 2 x "
                                            "crop_size), so ImageNet-size images pass unresized)")

    def check(self) -> None:
        _positive("data", self, "batch_size", "crop_size", "in_chans", "limit", "gpu_augment_size",
                  "max_image_pixels")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        _range_pair("data.crop_scale", self.crop_scale, 0.0, 1.0)
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None and len(v) != self.in_chans:
                raise ConfigError(f"data.{key} has {len(v)} values but data.in_chans is {self.in_chans}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError("data.std values must be > 0")
        if self.dataset in ("imagefolder", "folder", "shards") and not self.root_path:
            raise ConfigError(f"data.root_path is required for data.dataset={self.dataset}")
        if self.dataset in ("imagefolder", "folder", "fashion_mnist") and "://" in (self.root_path or ""):
            raise ConfigError(f"data.root_path: {self.root_path} is a URL, which data.dataset=shards reads (pack the "
                              f"images with `ijepa shards SRC URL`); data.dataset={self.dataset} reads a local folder")
        if self.dataset == "hf" and not self.hf_path:
            raise ConfigError("data.hf_path is required for data.dataset=hf (a Hub id or a local folder)")
        if self.hf_shuffle_buffer < 0:
            raise ConfigError(f"data.hf_shuffle_buffer must be >= 0, got {self.hf_shuffle_buffer}")
        if self.dataset == "hf" and self.gpu_augment:
            raise ConfigError("data.gpu_augment works with folders and shards, not with data.dataset=hf")


@dataclass
class MaskConfig:
    """The ``mask`` section and the sampler's own config (``ijepa.masks.MultiBlockMaskSampler``): one type.

    Scales are fractions of the whole grid; ``aspect_ratio`` (height / width) applies to target blocks only, the
    context block is square as in the reference. Built from Python or YAML alike, it is checked on construction
    (lists are accepted and stored as tuples); a bad value is a ``ConfigError`` naming the key."""

    mode: Literal["default", "reference"] = _f(
        "default", "default: the corrected sampler (whole-grid placement, independent scale/aspect draws, random "
                   "subsampling to equal lengths, per-rank seeds); reference: the reference's sampler, exactly")
    patch_size: int = _f(16, "encoder patch size in pixels (the reference keeps it in this section)")
    num_enc_masks: int = _f(1, "context masks per image")
    num_pred_masks: int = _f(4, "target blocks per image")
    enc_mask_scale: tuple[float, float] = _f((0.85, 1.0), "context block area range (fraction of the grid)")
    pred_mask_scale: tuple[float, float] = _f((0.15, 0.2), "target block area range")
    aspect_ratio: tuple[float, float] = _f((0.75, 1.5), "target block aspect ratio range (h/w)")
    min_keep: int = _f(10, "fewest patches a context mask may keep after the targets are removed from it")
    allow_overlap: bool = _f(False, "let target patches stay in the context (off in the paper)")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f"mask.{f.name}", getattr(self, f.name), hints[f.name]))
        self.check()

    def check(self) -> None:
        _positive("mask", self, "patch_size", "num_enc_masks", "num_pred_masks")
        if self.min_keep < 0:
            raise ConfigError(f"mask.min_keep must be >= 0, got {self.min_keep}")
        _range_pair("mask.enc_mask_scale", self.enc_mask_scale, 0.0, 1.0, lo_open=True)
        _range_pair("mask.pred_mask_scale", self.pred_mask_scale, 0.0, 1.0, lo_open=True)
        _range_pair("mask.aspect_ratio", self.aspect_ratio, 0.0, math.inf, lo_open=True)


@dataclass
class OptimizationConfig:
    """The ``optimization`` section: the run's length and time limit, and the lr, weight-decay and EMA schedules."""

    # How long a run is: `epochs` (or `total_steps`), optionally limited by `minutes` (train/horizon.py). The
    # schedules (lr, weight decay, EMA) are functions of the run's progress from 0 to 1 (train/schedules.py).
    epochs: int = _f(300, "training epochs: the run's length, and the schedules' horizon")
    total_steps: int | None = _f(None, "the run's length in steps instead of epochs (null: epochs x steps per "
                                       "epoch); the lr warm-up takes warmup / epochs of it")
    minutes: float | None = _f(None, "a time limit (ijepa train --minutes M): the run keeps its length where it fits "
                                     "M minutes of wall time here, and otherwise trains as many steps as fit. It "
                                     "measures its steps as it goes and re-plans the steps left at regular points, "
                                     "so a slow start or a busy neighbour moves the last step, not the end time; "
                                     "every schedule is annealed to the last step. The plan is logged to "
                                     "horizon.json and kept in the checkpoint (a resume continues it)")
    replay: str | None = _f(None, "a horizon.json written by an earlier timed run: follow its recorded plan "
                                  "(the same re-plans at the same steps) instead of timing, which reproduces that "
                                  "run bit for bit on any machine")
    max_steps: int | None = _f(None, "stop after this many steps in all, the schedules keeping the run's full "
                                     "length (to split a run in parts, or a quick look)")
    warmup: float = _f(40, "linear lr warm-up, in epochs (a share warmup / epochs of the run)")
    start_lr: float = _f(2e-4, "lr at step 0")
    lr: float = _f(1e-3, "peak lr, reached after warmup")
    final_lr: float = _f(1e-6, "lr at the end of the cosine decay")
    weight_decay: float = _f(0.04, "initial weight decay (cosine schedule to final_weight_decay)")
    final_weight_decay: float = _f(0.4, "final weight decay")
    ema: tuple[float, float] = _f((0.996, 1.0), "target-encoder EMA momentum, linear from first to second")
    ema_steps: int | None = _f(None, "the run length, in steps, that ema was tuned for: a run of T steps instead "
                                     "moves each end's 1 - momentum by ema_steps / T, so the target encoder moves "
                                     "as far in all as at the tuned length. null: ema whatever the length")
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value (null: no clipping)")

    def check(self) -> None:
        _positive("optimization", self, "epochs", "clip_grad", "max_steps", "total_steps", "ema_steps")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ConfigError(f"optimization.minutes must be a positive number of minutes, got {self.minutes}")
        if self.minutes is not None and self.replay is not None:
            raise ConfigError("optimization.replay follows a recorded plan, optimization.minutes makes a new one: "
                              "give one of them")
        for key in ("start_lr", "lr", "final_lr", "weight_decay", "final_weight_decay", "warmup"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optimization.{key} must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"optimization.lr must be > 0, got {self.lr}")
        if self.warmup > self.epochs:
            raise ConfigError(f"optimization.warmup ({self.warmup}) is longer than the run ({self.epochs} epochs)")
        _range_pair("optimization.ema", self.ema, 0.0, 1.0)
        for b in self.betas:
            _in_range("optimization.betas", b, 0.0, 1.0, hi_open=True)


@dataclass
class LossConfig:
    """The ``loss`` section: the terms added to the paper's loss (all 0 by default: the paper's loss alone)."""

    var_weight: float = _f(0.0, "ours, not the paper's: weight of a VICReg variance term (hinge on the per-"
                                "dimension std of the batch's pooled context features); 0 = the paper's loss")
    cov_weight: float = _f(0.0, "ours: weight of the VICReg covariance term on the same features")
    sigreg_weight: float = _f(0.0, "ours: weight of LeJEPA's SIGReg (distance of the batch's pooled context features "
                                   "from an isotropic Gaussian, on random 1-D projections); an alternative to the "
                                   "VICReg terms; 0 = off")
    sigreg_slices: int = _f(256, "random directions per step for SIGReg")

    def check(self) -> None:
        _positive("loss", self, "sigreg_slices")
        for key in ("var_weight", "cov_weight", "sigreg_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key} must be >= 0")


@dataclass
class LoggingConfig:
    """The ``logging`` section: the run folder, checkpoints, logs and collapse checks."""

    folder: str | None = _f(None, "run folder (the reference's key); `ijepa train --out DIR` overrides it")
    write_tag: str = _f("jepa", "checkpoint and log file prefix")
    log_freq: int = _f(10, "steps between progress-bar / console updates (the CSV gets every step)")
    checkpoint_freq: int = _f(50, "keep a checkpoint every N epochs besides latest (0: never)")
    checkpoint_every_steps: int = _f(0, "also write latest every N steps (0: only at epoch ends)")
    checkpoint_every_minutes: float = _f(0.0, "also write latest once this many minutes have passed since the last "
                                              "checkpoint (0: off): bounds the work a crash loses by time. Asked "
                                              "every log_freq steps; under DDP rank 0's clock decides for every "
                                              "rank. Written by a background thread from a copy in CPU memory, so "
                                              "the steps go on meanwhile")
    monitor_freq: int = _f(0, "steps between collapse checks (feature std, RankMe) on a fixed batch "
                              "(0: at epoch ends only)")
    online_knn: bool = _f(True, "at each epoch end and the end of the run, k-NN accuracy (k=20, T=0.07) of the "
                                "target encoder's pooled features: 2,000 labelled training images as the bank, "
                                "1,000 held-out test images as queries (Fashion-MNIST only; other datasets skip "
                                "it). The every-monitor_freq-steps checks skip it: it costs ~10x the rest")
    tracker: tuple[str, ...] | str | None = _f(
        (), "experiment trackers that also receive the run: " + ", ".join(TRACKERS) + ", several as a list "
            "([wandb, mlflow]), or none. Each gets the resolved config, log.csv's and monitor.csv's values at their "
            "steps and summary.json; a resumed run continues the same tracked run (tracker.json). wandb and mlflow "
            "need pip install 'ijepa[tracking]', tensorboard 'ijepa[tensorboard]' (docs/training.md)")
    tracker_project: str = _f("ijepa", "the W&B project / MLflow experiment a tracked run goes to (the run is named "
                                       "after its folder)")
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self) -> None:
        self.tracker = tracker_names(self.tracker)

    def check(self) -> None:
        for key in ("log_freq",):
            if getattr(self, key) <= 0:
                raise ConfigError(f"logging.{key} must be > 0")
        for key in ("checkpoint_freq", "checkpoint_every_steps", "checkpoint_every_minutes", "monitor_freq"):
            if getattr(self, key) < 0:
                raise ConfigError(f"logging.{key} must be >= 0")
        if not math.isfinite(self.checkpoint_every_minutes):
            raise ConfigError("logging.checkpoint_every_minutes must be a number of minutes (0: off)")
        if not self.write_tag or "/" in self.write_tag:
            raise ConfigError("logging.write_tag must be a non-empty name without '/'")
        if not self.tracker_project.strip():
            raise ConfigError("logging.tracker_project must be a non-empty name")
