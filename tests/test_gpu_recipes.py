"""The one-GPU recipes (configs/imagenette_*.yaml, configs/in1k_*_1gpu.yaml; docs/gpu-recipes.md): each validates at
start-up with the hyperparameters its derivation gives, and each trains 20 steps on the CPU at a tiny resolution
on a small synthetic image folder (the same pipeline, with data.gpu_augment, that a GPU run uses)."""

import math

import numpy as np
import pytest
import yaml
from PIL import Image

from ijepa.cli import main
from ijepa.config import load_config
from ijepa.train.loop import train

RECIPES = ["imagenette_vits16", "imagenette_vitb16", "in1k_vits16_1gpu", "in1k_vitb16_1gpu"]
# Each recipe shrunk to seconds on the CPU: its own model width and input pipeline at a tiny resolution, depth and
# batch (conftest's TINY would replace the recipe's model with the CPU default's).
SHRUNK = ["data.crop_size=96", "mask.min_keep=4", "meta.enc_depth=1", "meta.pred_depth=1", "data.batch_size=4",
          "data.num_workers=0", "optimization.max_steps=20", "meta.device=cpu", "meta.precision=fp32",
          "logging.progress=false", "logging.checkpoint_freq=0", "logging.checkpoint_every_steps=0"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_at_startup_with_its_derived_hyperparameters(name, capsys):
    assert main(["config", "--config", name]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    data, opt = cfg["data"], cfg["optimization"]
    assert data["dataset"] == "imagefolder" and data["gpu_augment"] is True and data["crop_size"] == 224
    ratio = data["batch_size"] / 2048  # the reference's global batch
    assert opt["lr"] == pytest.approx(1e-3 * math.sqrt(ratio), rel=0.02)  # square-root rule
    assert opt["start_lr"] == pytest.approx(2e-4 * math.sqrt(ratio), rel=0.02)
    assert opt["ema"][0] == pytest.approx(0.996 ** ratio, abs=5e-5) and opt["ema"][1] == 1.0  # EMA scaling rule
    assert 0.08 <= opt["warmup"] / opt["epochs"] <= 0.15
    assert cfg["meta"]["model_name"] == ("vit_small" if "vits16" in name else "vit_base")
    assert cfg["mask"]["patch_size"] == 16


def _synthetic_folder(root, n=16):
    """n small JPEGs in two class folders, under both recipes' image folders."""
    rng = np.random.default_rng(0)
    for folder in ("imagenette2", "imagenet"):
        for i in range(n):
            d = root / folder / "train" / f"n0{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            h, w = (90, 120) if i % 2 else (120, 100)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_20_steps_on_the_cpu_at_a_tiny_resolution(name, tmp_path):
    _synthetic_folder(tmp_path / "data")
    cfg = load_config(name, [f"data.root_path={tmp_path / 'data'}", *SHRUNK])
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 20 and math.isfinite(summary["final_loss"]) and summary["skipped_images"] == 0
