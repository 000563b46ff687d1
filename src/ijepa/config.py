"""Pretraining configuration: YAML files validated into dataclasses before anything starts.

Section and key names are the reference's (``meta``, ``data``, ``mask``, ``optimization``, ``logging``), so its
recipe files load unchanged; keys it does not have are ours and are documented the same way. Every problem — an
unknown key, a wrong type, an impossible value — is one :class:`ConfigError` naming the key, raised at load time.
This module imports no torch, so configs can be checked and documented without the training stack.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .io import atomic_write_text
from .mask_geometry import geometry_problem

# (width, heads) of each encoder size: models/vit.py's VIT_SIZES, repeated so this module stays torch-free
# (tests/test_config.py checks they agree)
ENCODER_WIDTH_HEADS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12), "vit_large": (1024, 16),
                       "vit_huge": (1280, 16), "vit_giant": (1408, 16), "vit_gigantic": (1664, 16)}
ENCODER_NAMES = tuple(ENCODER_WIDTH_HEADS)
DEFAULT_CONFIG = "fmnist_cpu"
# The precision policy's choices (ijepa.precision resolves them; kept here so configs and the CLI stay torch-free)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

# Keys that existed and were taken out: naming one fails at start-up with why (docs/cpu-recipe.md has the runs).
REMOVED_KEYS = {
    "loss.target_batch_norm": "batch-centred or standardised targets (recipe rows tc, ts) scored below the paper's "
                              "layer-normed targets, which the loss always uses now",
    "meta.cpu_chunk_tokens": "slicing the batch on the CPU gained the training step nothing (0.98x); training runs "
                             "each batch whole (feature extraction still slices, models/vit.py)",
}


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class MetaConfig:
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
    use_bfloat16: bool = _f(True, "the reference's switch, kept as an alias: false means meta.precision=fp32 when "
                                  "meta.precision is auto; true leaves meta.precision to decide")
    load_checkpoint: bool = _f(True, "resume from the run folder's latest checkpoint when one exists")
    read_checkpoint: str | None = _f(None, "resume from this checkpoint file instead of the run folder's latest")
    copy_data: bool = _f(False, "accepted for compatibility with the reference's configs; has no effect")
    seed: int = _f(0, "random seed (weights, data order, masks; each rank derives its own)")
    compile: bool = _f(False, "torch.compile the encoders and predictor")
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    grad_checkpointing: bool = _f(False, "activation checkpointing in the context encoder (huge/gigantic)")
    threads: int | None = _f(None, "CPU threads for torch (null: torch's default)")
    flush_denormal: bool = _f(True, "CPU: flush denormal floats to zero (FTZ/DAZ); without it fp32 steps slow down "
                                    "as training goes on (docs/performance.md, benchmarks/denormals.py)")

    @property
    def precision_request(self) -> str:
        """What to ask the precision policy for: ``precision``, with the reference's ``use_bfloat16=false``
        meaning fp32."""
        return "fp32" if not self.use_bfloat16 and self.precision == "auto" else self.precision

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
        if not self.use_bfloat16 and self.precision == "bf16":
            raise ConfigError("meta.use_bfloat16=false contradicts meta.precision=bf16: drop one")
        if self.device != "auto" and not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"meta.device: '{self.device}' is not auto, cpu, cuda or cuda:N")


@dataclass
class DataConfig:
    dataset: Literal["imagefolder", "folder", "shards", "fashion_mnist"] = _f(
        "imagefolder", "imagefolder: class sub-folders under root_path/image_folder/train (ImageNet layout); "
                       "folder: every image under root_path/image_folder, unlabelled; "
                       "shards: WebDataset-style tar shards under root_path/image_folder (`ijepa shards` makes them); "
                       "fashion_mnist: the IDX files under root_path (default /usr/share/datasets/fashion-mnist)")
    root_path: str | None = _f(None, "dataset root")
    image_folder: str = _f("", "sub-folder of root_path (the reference's key)")
    batch_size: int = _f(128, "images per process per step")
    num_workers: int = _f(8, "DataLoader worker processes (folders; the in-memory Fashion-MNIST path uses none)")
    pin_mem: bool = _f(True, "pin host memory for faster copies to the GPU")
    crop_size: int = _f(224, "training resolution (square crops)")
    crop_scale: tuple[float, float] = _f((0.3, 1.0), "RandomResizedCrop area range")
    use_horizontal_flip: bool = _f(False, "random horizontal flips")
    use_color_distortion: bool = _f(False, "colour jitter + random grayscale, as the reference's")
    color_jitter_strength: float = _f(0.0, "colour jitter strength")
    use_gaussian_blur: bool = _f(False, "random Gaussian blur")
    in_chans: int = _f(3, "image channels the encoder takes (1 for grayscale)")
    mean: tuple[float, ...] | None = _f(None, "normalisation mean (null: ImageNet's, or the dataset's own)")
    std: tuple[float, ...] | None = _f(None, "normalisation std (null: ImageNet's, or the dataset's own)")
    limit: int | None = _f(None, "use only the first N images (smoke tests, quick looks)")
    max_image_pixels: int | None = _f(100_000_000, "folders: images with more pixels (width x height, read from "
                                                   "the header) are skipped, counted and named instead of decoded "
                                                   "(null: no limit; data/decode.py)")
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


@dataclass
class MaskConfig:
    """The ``mask`` section and the sampler's own config (``ijepa.masks.MultiBlockMaskSampler``): one type.

    Scales are fractions of the whole grid; ``aspect_ratio`` (height / width) applies to target blocks only, the
    context block is square as in the reference. Built from Python or YAML alike, it is checked on construction
    (lists are accepted and stored as tuples); a bad value is a :class:`ConfigError` naming the key."""

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
    epochs: int = _f(300, "training epochs")
    ipe_scale: float = _f(1.0, "schedules (lr, wd, EMA) run over ipe_scale × the run's steps")
    warmup: float = _f(40, "linear lr warmup, in epochs")
    start_lr: float = _f(2e-4, "lr at step 0")
    lr: float = _f(1e-3, "peak lr, reached after warmup")
    final_lr: float = _f(1e-6, "lr at the end of the cosine decay")
    weight_decay: float = _f(0.04, "initial weight decay (cosine schedule to final_weight_decay)")
    final_weight_decay: float = _f(0.4, "final weight decay")
    ema: tuple[float, float] = _f((0.996, 1.0), "target-encoder EMA momentum, linear from first to second")
    ema_steps: int | None = _f(None, "the horizon, in steps, that ema was tuned for: a run whose schedules run "
                                     "over T steps instead (a time budget or cap, total_steps, other epochs) "
                                     "moves each end's 1 - momentum by ema_steps / T, so the target encoder "
                                     "moves as far in all as at the tuned horizon. null: ema whatever the horizon")
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value (null: no clipping)")
    max_steps: int | None = _f(None, "stop after this many steps in all (schedules keep their full length)")
    total_steps: int | None = _f(None, "the run's length in steps, and the schedules' horizon (lr warm-up taking "
                                       "warmup / epochs of it): null = epochs x steps per epoch. Set by "
                                       "optimization.minutes, recorded in config.yaml and the checkpoint")
    minutes: float | None = _f(None, "a time budget (ijepa train --minutes M): the run times a few throwaway steps, "
                                     "then fixes total_steps so that training, the epoch-end checks and "
                                     "checkpoints end within M minutes of wall time, every schedule annealed over "
                                     "that horizon (train/budget.py; budget.json in the run folder). Resuming "
                                     "keeps the recorded step count; DDP ranks agree on the slowest's")
    max_minutes: float | None = _f(None, "a time cap (ijepa train --max-minutes M): the run keeps its epochs when "
                                         "they fit M minutes here, and otherwise, as optimization.minutes does, "
                                         "trains as many steps as fit with every schedule annealed over them. The "
                                         "CPU default's rungs set one so the quick start ends in time on slow "
                                         "machines and is unchanged on fast ones; a budget (minutes) replaces it")

    def check(self) -> None:
        _positive("optimization", self, "epochs", "ipe_scale", "clip_grad", "max_steps", "total_steps", "minutes",
                  "max_minutes", "ema_steps")
        for key in ("start_lr", "lr", "final_lr", "weight_decay", "final_weight_decay", "warmup"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optimization.{key} must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"optimization.lr must be > 0, got {self.lr}")
        if self.total_steps is None and self.minutes is None and self.warmup > self.epochs * self.ipe_scale:
            raise ConfigError(f"optimization.warmup ({self.warmup}) is longer than the run "
                              f"({self.epochs} epochs × ipe_scale {self.ipe_scale})")
        _range_pair("optimization.ema", self.ema, 0.0, 1.0)
        for b in self.betas:
            _in_range("optimization.betas", b, 0.0, 1.0, hi_open=True)


@dataclass
class LossConfig:
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
    folder: str | None = _f(None, "run folder (the reference's key); `ijepa train --out DIR` overrides it")
    write_tag: str = _f("jepa", "checkpoint and log file prefix")
    log_freq: int = _f(10, "steps between progress-bar / console updates (the CSV gets every step)")
    checkpoint_freq: int = _f(50, "keep a checkpoint every N epochs besides latest (0: never)")
    checkpoint_every_steps: int = _f(0, "also write latest every N steps (0: only at epoch ends)")
    monitor_freq: int = _f(0, "steps between collapse checks (feature std, RankMe) on a fixed batch "
                              "(0: at epoch ends only)")
    online_knn: bool = _f(True, "at each epoch end and the end of the run, k-NN accuracy (k=20, T=0.07) of the "
                                "target encoder's pooled features: 2,000 labelled training images as the bank, "
                                "1,000 held-out test images as queries (Fashion-MNIST only; other datasets skip "
                                "it). The every-monitor_freq-steps checks skip it: it costs ~10x the rest")
    tensorboard: bool = _f(False, "also write TensorBoard events (needs the tensorboard package)")
    progress: bool = _f(True, "show a progress bar")

    def check(self) -> None:
        for key in ("log_freq",):
            if getattr(self, key) <= 0:
                raise ConfigError(f"logging.{key} must be > 0")
        for key in ("checkpoint_freq", "checkpoint_every_steps", "monitor_freq"):
            if getattr(self, key) < 0:
                raise ConfigError(f"logging.{key} must be >= 0")
        if not self.write_tag or "/" in self.write_tag:
            raise ConfigError("logging.write_tag must be a non-empty name without '/'")


@dataclass
class Config:
    meta: MetaConfig = field(default_factory=MetaConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def check(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).check()
        if self.data.crop_size % self.mask.patch_size:
            raise ConfigError(f"data.crop_size ({self.data.crop_size}) is not a multiple of mask.patch_size "
                              f"({self.mask.patch_size})")
        side = self.data.crop_size // self.mask.patch_size
        problem = geometry_problem(side, side, self.mask)
        if problem is not None:  # the sampler would refuse it after the models are built: say so now
            keys = ", ".join(f"mask.{k}" for k in problem.keys)
            raise ConfigError(f"{keys}: {problem.message} (the grid is data.crop_size {self.data.crop_size} / "
                              f"mask.patch_size {self.mask.patch_size})")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------------- validation


def _positive(section: str, obj: Any, *keys: str) -> None:
    for key in keys:
        v = getattr(obj, key)
        if v is not None and v <= 0:
            raise ConfigError(f"{section}.{key} must be > 0, got {v}")


def _in_range(key: str, v: float, lo: float, hi: float, hi_open: bool = False) -> None:
    if v < lo or v > hi or (hi_open and v == hi):
        raise ConfigError(f"{key}: {v} is outside [{lo}, {hi}{')' if hi_open else ']'}")


def _range_pair(key: str, pair: tuple[float, float], lo: float, hi: float, lo_open: bool = False) -> None:
    a, b = pair
    if not (lo <= a <= b <= hi) or not math.isfinite(b) or (a == 0 and lo == 0 and b == 0) or (lo_open and a == lo):
        raise ConfigError(f"{key}: expected [min, max] with {lo} {'<' if lo_open else '<='} min <= max "
                          f"{'<' if math.isinf(hi) else '<='} {hi}, got {list(pair)}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (the few shapes this module uses) and normalise it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({list(value)})")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 5e-4 as a string: accept what float() accepts
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if name in REMOVED_KEYS:
            raise ConfigError(f"{name} was removed: {REMOVED_KEYS[name]}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{name}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, name)
        else:
            kwargs[key] = _coerce(name, value, tp)
    return cls(**kwargs)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# -------------------------------------------------------------------------------------------------- loading


def config_dir() -> Path:
    return Path(__file__).parent / "configs"


def available_configs() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def resolve_config_path(name_or_path: str | None) -> Path:
    """A file path, or the name of a shipped config (``configs/NAME.yaml``); None gives the CPU default."""
    if name_or_path is None:
        name_or_path = DEFAULT_CONFIG
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = config_dir() / (p.name if p.suffix == ".yaml" else p.name + ".yaml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a shipped config "
                      f"({', '.join(available_configs())})")


def parse_overrides(items: list[str]) -> dict:
    """``["data.batch_size=64", "optimization.ema=[0.999,1.0]"]`` -> nested dict; values are YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise ConfigError(f"override '{item}': bad key '{key}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': cannot parse the value ({e})") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def config_from_dict(data: dict) -> Config:
    cfg = _build(Config, data, "")
    cfg.check()
    return cfg


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the CPU default), apply ``key.sub=value`` overrides, validate, return it."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path.name}: {e}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe() -> str:
    """Every key with its default and meaning, as Markdown (``ijepa config --keys``, docs/configuration.md)."""
    lines = []
    for sec in dataclasses.fields(Config):
        lines += [f"### `{sec.name}`", "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(sec.default_factory):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = yaml.safe_dump(_plain(default), default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"| `{sec.name}.{f.name}` | `{shown}` | {f.metadata.get('help', '')} |")
        lines.append("")
    return "\n".join(lines)
