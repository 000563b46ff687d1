"""Pretraining configuration: YAML files validated into dataclasses before anything starts.

Section and key names are the reference's (``meta``, ``data``, ``mask``, ``optimization``, ``logging``), so its
recipe files load: the few of its keys that are not ours are translated once, as a file is read
(:func:`translate_reference_keys`), and keys it does not have are ours and are documented the same way. Every
problem — an unknown key, a wrong type, an impossible value — is one :class:`ConfigError` naming the key, raised at
load time. This module imports no torch, so configs can be checked and documented without the training stack
(the sections and their keys are :mod:`ijepa.config_sections`, the typed-field machinery
:mod:`ijepa.config_fields`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config_fields import _build, _plain, describe_sections
from .config_overrides import merge_overrides, parse_overrides, where_from
from .config_sections import (
    DataConfig,
    LoggingConfig,
    LossConfig,
    MaskConfig,
    MetaConfig,
    OptimizationConfig,
)
from .errors import ConfigError
from .io import atomic_write_text
from .mask_geometry import geometry_problem, placement_problem

DEFAULT_CONFIG = "fmnist_cpu"
# The precision policy's choices (ijepa.precision resolves them; kept here so configs and the CLI stay torch-free)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

# The reference's keys that are not ours, and what each becomes as a file is read (translate_reference_keys)
REFERENCE_KEYS = {
    "meta.use_bfloat16": "false: `meta.precision: fp32` (beside another meta.precision it is an error); true: "
                         "nothing, meta.precision decides",
    "meta.copy_data": "dropped: it had no effect",
    "optimization.ipe_scale": "1.0: dropped; another value is an error: schedules longer than the run are not "
                              "supported (optimization.max_steps stops a run early with the schedules of its full "
                              "length)",
}

# Keys of ours that were replaced, and what each becomes as a file is read (translate_replaced_keys): every
# config.yaml a run wrote before holds them, so they keep loading.
REPLACED_KEYS = {
    "logging.tensorboard": "true: `tensorboard` is added to `logging.tracker`; false: dropped",
}

# Keys that existed and were taken out: naming one fails at start-up with why (the runs behind each:
# docs/experiments/2026-11-cpu-recipe-search.md).
REMOVED_KEYS = {
    "loss.target_batch_norm": "batch-centred or standardised targets scored below the paper's layer-normed targets "
                              "(82.1% and 81.9% against 82.5%), which the loss always uses now",
    "meta.cpu_chunk_tokens": "slicing the batch on the CPU gained the training step nothing (0.98x); training runs "
                             "each batch whole (feature extraction still slices, models/vit.py)",
    "optimization.max_minutes": "optimization.minutes is the time limit now: a run keeps its configured length "
                                "where that fits, and otherwise trains the steps that fit",
}


@dataclass
class Config:
    """A pretraining config: six sections, each a dataclass that validates its keys (``load_config`` builds it;
    ``to_dict`` gives the YAML form)."""

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
        # after the models are built the sampler would refuse the first, and give up at some step on the second
        problem = geometry_problem(side, side, self.mask) or placement_problem(side, side, self.mask,
                                                                               self.data.batch_size)
        if problem is not None:
            keys = ", ".join(f"mask.{k}" for k in problem.keys)
            raise ConfigError(f"{keys}: {problem.message} (the grid is data.crop_size {self.data.crop_size} / "
                              f"mask.patch_size {self.mask.patch_size})")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


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


def translate_reference_keys(data: dict) -> dict:
    """``data`` (a config's sections, as read) with the reference's keys that are not ours rewritten as
    :data:`REFERENCE_KEYS` says; ``data`` itself is left as it was."""
    data = {name: dict(keys) if isinstance(keys, dict) else keys for name, keys in data.items()}
    meta, opt = data.get("meta"), data.get("optimization")
    if isinstance(meta, dict):
        meta.pop("copy_data", None)
        if "use_bfloat16" in meta:
            bf16 = meta.pop("use_bfloat16")
            if not isinstance(bf16, bool):
                raise ConfigError(f"meta.use_bfloat16: expected true or false, got {bf16!r}")
            if not bf16:
                if meta.get("precision", "fp32") != "fp32":
                    raise ConfigError(f"meta.use_bfloat16=false means meta.precision=fp32, which contradicts "
                                      f"meta.precision={meta['precision']}: drop one")
                meta["precision"] = "fp32"
    if isinstance(opt, dict) and "ipe_scale" in opt:
        scale = opt.pop("ipe_scale")
        if scale != 1:
            raise ConfigError(f"optimization.ipe_scale={scale}: schedules longer than the run are not supported; "
                              "optimization.max_steps stops a run early with the schedules of its full length")
    return data


def translate_replaced_keys(data: dict) -> dict:
    """``data`` with the keys of :data:`REPLACED_KEYS` rewritten as it says (``data`` itself is left as it was)."""
    log = data.get("logging")
    if not (isinstance(log, dict) and "tensorboard" in log):
        return data
    log = dict(log)
    tensorboard = log.pop("tensorboard")
    if not isinstance(tensorboard, bool):
        raise ConfigError(f"logging.tensorboard: expected true or false, got {tensorboard!r}")
    if tensorboard:
        given = log.get("tracker") or []
        log["tracker"] = [*([given] if isinstance(given, str) else given), "tensorboard"]
    return {**data, "logging": log}


def config_from_dict(data: dict) -> Config:
    cfg = _build(Config, translate_replaced_keys(translate_reference_keys(data)), "", REMOVED_KEYS)
    cfg.check()
    return cfg


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the CPU default), apply ``key.sub=value`` overrides, validate, return it.

    Args:
        name_or_path: a shipped config's name (``ijepa config --list``), a YAML file, or None for the CPU default
            (``fmnist_cpu``). The reference's recipe files load as they are: their keys that are not ours are
            translated as the file is read.
        overrides: ``section.key=value`` strings, values in YAML (``"optimization.ema=[0.999,1.0]"``); a later
            one wins.

    Returns:
        The validated ``Config``.

    Raises:
        ijepa.errors.ConfigError: an unknown key, a wrong type or an impossible value, naming the key.
    """
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    data = merge_overrides(data, parse_overrides(overrides or []))
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(where_from(str(e), path.name, overrides or [])) from None


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe() -> str:
    """Every key with its default and meaning, then the reference's keys that are translated and the keys that were
    removed, as Markdown (``ijepa config --keys``, docs/configuration.md)."""
    lines = describe_sections(Config)
    lines += ["### The reference's keys", "", "The reference's (facebookresearch/ijepa) recipe files load: "
              "these keys of theirs are translated into ours as a file is read.", "", "| key | becomes |", "|---|---|"]
    lines += [f"| `{key}` | {becomes} |" for key, becomes in REFERENCE_KEYS.items()]
    lines += ["", "### Replaced keys", "", "Earlier keys of ours, still read: each becomes what the table says.", "",
              "| key | becomes |", "|---|---|"]
    lines += [f"| `{key}` | {becomes} |" for key, becomes in REPLACED_KEYS.items()]
    lines += ["", "### Removed keys", "", "Naming one stops `ijepa train` with the reason.", "",
              "| key | why |", "|---|---|"]
    lines += [f"| `{key}` | {why} |" for key, why in REMOVED_KEYS.items()]
    return "\n".join(lines + [""])
