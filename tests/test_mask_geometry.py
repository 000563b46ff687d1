"""The one geometry check: the config refuses an impossible mask geometry at load time, naming the keys, with the
sampler's own message (both call ijepa.mask_geometry.geometry_problem)."""

import subprocess
import sys

import pytest

from ijepa.cli import main
from ijepa.config import ConfigError, config_from_dict, load_config
from ijepa.mask_geometry import geometry_problem
from ijepa.masks import MaskConfig, MultiBlockMaskSampler
from ijepa.models.vit import VisionTransformer

IMPOSSIBLE = ["mask.pred_mask_scale=[0.9,1.0]", "mask.enc_mask_scale=[0.9,1.0]"]


@pytest.mark.parametrize("grid, kw, keys", [
    (16, {"pred_mask_scale": (0.9, 1.0), "enc_mask_scale": (0.9, 1.0)}, ("pred_mask_scale", "enc_mask_scale")),
    (16, {"enc_mask_scale": (0.03, 0.5), "min_keep": 30}, ("enc_mask_scale", "min_keep")),
    (8, {"min_keep": 65}, ("min_keep",)),
    (8, {"mode": "reference", "min_keep": 10}, ("pred_mask_scale", "aspect_ratio", "min_keep")),
])
def test_config_and_sampler_refuse_the_same_geometry_with_the_same_message(grid, kw, keys):
    problem = geometry_problem(grid, grid, MaskConfig(**kw))
    assert problem is not None and set(keys) <= set(problem.keys)
    with pytest.raises(ValueError) as sampler_err:
        MultiBlockMaskSampler(grid, MaskConfig(**kw))
    assert str(sampler_err.value) == problem.message
    patch = 32 // grid  # a 32-px crop on the same grid
    with pytest.raises(ConfigError) as config_err:
        config_from_dict({"data": {"dataset": "fashion_mnist", "crop_size": 32}, "mask": {"patch_size": patch, **kw}})
    msg = str(config_err.value)
    assert msg.startswith(", ".join(f"mask.{k}" for k in problem.keys) + ": ")
    assert problem.message in msg and "data.crop_size 32 / mask.patch_size" in msg


def test_workable_geometries_pass():
    for grid in (4, 8, 9, 14, 16):
        assert geometry_problem(grid, grid, MaskConfig(min_keep=4, pred_mask_scale=(0.15, 0.2))) is None
    assert geometry_problem(16, 16, MaskConfig(mode="reference")) is None
    assert geometry_problem(4, 4, MaskConfig(pred_mask_scale=(0.9, 1.0), allow_overlap=True, min_keep=4)) is None


def test_impossible_mask_geometry_is_one_config_line_before_anything_is_built(tmp_path, capsys, monkeypatch):
    def no_models(*a, **k):
        raise AssertionError("a model was built")
    monkeypatch.setattr(VisionTransformer, "__init__", no_models)
    assert main(["train", "--config", "fmnist_cpu", "--out", str(tmp_path / "run"), *IMPOSSIBLE]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("ijepa: config error: command line: mask.pred_mask_scale=[0.9,1.0], "
                          "mask.enc_mask_scale=[0.9,1.0]: mask.pred_mask_scale, mask.enc_mask_scale")
    assert "fewer than min_keep=4" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_config_module_stays_torch_free():
    code = "import sys, ijepa.config, ijepa.mask_geometry; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_load_config_names_the_keys():
    with pytest.raises(ConfigError, match=r"mask\.pred_mask_scale, mask\.enc_mask_scale"):
        load_config(None, IMPOSSIBLE)
