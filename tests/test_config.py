import dataclasses
import re

import pytest
import torch
import yaml

from ijepa.config import (
    REFERENCE_KEYS,
    REMOVED_KEYS,
    Config,
    ConfigError,
    available_configs,
    config_dir,
    describe,
    load_config,
    translate_reference_keys,
)
from ijepa.config_overrides import parse_overrides
from ijepa.config_sections import ENCODER_NAMES, ENCODER_WIDTH_HEADS
from ijepa.models import VIT_SIZES


def test_default_config_is_the_cpu_recipe():
    cfg = load_config()
    assert cfg.data.dataset == "fashion_mnist" and cfg.data.crop_size % cfg.mask.patch_size == 0


@pytest.mark.parametrize("override,message", [
    ("data.batchsize=3", "unknown key 'data.batchsize' (did you mean 'data.batch_size'?)"),
    ("nosuch.key=1", "unknown key 'nosuch'"),
    ("data.batch_size=abc", "data.batch_size: expected an integer"),
    ("data.batch_size=0", "data.batch_size must be > 0"),
    ("meta.use_bfloat16=maybe", "meta.use_bfloat16: expected true or false"),
    ("mask.mode=random", "mask.mode: 'random' is not one of default, reference"),
    ("optimization.ema=[0.9]", "optimization.ema: expected 2 values"),
    ("optimization.ema=[1.0,0.9]", "optimization.ema: expected [min, max]"),
    ("data.crop_size=30", "not a multiple of mask.patch_size"),
    ("meta.model_name=vit_enormous", "meta.model_name: unknown encoder"),
    ("optimization.warmup=100", "optimization.warmup (100.0) is longer than the run"),
    ("data.mean=[0.5,0.5]", "data.mean has 2 values but data.in_chans is 1"),
    ("meta.init_std=0", "meta.init_std must be > 0"),
    ("meta.enc_embed_dim=0", "meta.enc_embed_dim must be > 0"),
    ("meta.enc_embed_dim=500", "meta.enc_embed_dim: width 500 does not divide into 12 heads"),
    ("meta.enc_num_heads=7", "meta.enc_num_heads: width 768 does not divide into 7 heads"),
    ("meta.pred_num_heads=5", "meta.pred_emb_dim: width 96 does not divide into 5 heads"),
    ("meta.enc_mlp_ratio=-1", "meta.enc_mlp_ratio must be > 0"),
])
def test_bad_configs_fail_naming_the_key(override, message):
    # the line names where the value came from and the key as given, then says what is wrong with it
    _key, why = re.match(r"([\w.]+)(?::| )\s*(.*)", message).groups()
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(f"command line: {override}: ") and why in str(e.value) and "\n" not in str(e.value)


def test_overrides_parse_yaml_values_and_nest():
    assert parse_overrides(["a.b=1", "a.c=[0.1, 2]", "d=null", "e.f=true"]) == {
        "a": {"b": 1, "c": [0.1, 2]}, "d": None, "e": {"f": True}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["nokey"])
    cfg = load_config(None, ["optimization.lr=0.002", "optimization.ema=[0.99, 1.0]"])
    assert cfg.optimization.lr == 0.002 and cfg.optimization.ema == (0.99, 1.0)


def test_unknown_key_in_a_file_fails(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"dataset": "fashion_mnist", "crop_size": 28, "colour": 1},
                                 "mask": {"patch_size": 4}}))
    with pytest.raises(ConfigError, match="unknown key 'data.colour'"):
        load_config(str(p))


@pytest.mark.parametrize("name", available_configs())
def test_shipped_configs_are_valid(name):
    load_config(name, ["data.root_path=/tmp"])


def test_reference_recipes_keep_the_reference_hyperparameters():
    expected = {  # facebookresearch/ijepa configs/*.yaml
        "in1k_vith14_ep300": ("vit_huge", 14, 224, 128, 300, 40, 12),
        "in1k_vith16-448_ep300": ("vit_huge", 16, 448, 16, 300, 40, 12),
        "in22k_vith14_ep66": ("vit_huge", 14, 224, 32, 66, 3, 12),
        "in22k_vitg16_ep44": ("vit_giant", 16, 224, 16, 44, 3, 16),
    }
    for name, (model, patch, crop, bs, epochs, warmup, pred_depth) in expected.items():
        c = load_config(name)
        assert (c.meta.model_name, c.mask.patch_size, c.data.crop_size, c.data.batch_size, c.optimization.epochs,
                c.optimization.warmup, c.meta.pred_depth) == (model, patch, crop, bs, epochs, warmup, pred_depth)
        o = c.optimization
        assert (o.start_lr, o.lr, o.final_lr, o.weight_decay, o.final_weight_decay, o.ema) == (
            2e-4, 1e-3, 1e-6, 0.04, 0.4, (0.996, 1.0))
        m = c.mask
        assert (m.num_enc_masks, m.num_pred_masks, m.enc_mask_scale, m.pred_mask_scale, m.aspect_ratio,
                m.min_keep, m.allow_overlap) == (1, 4, (0.85, 1.0), (0.15, 0.2), (0.75, 1.5), 10, False)
        assert c.meta.pred_emb_dim == 384 and c.data.crop_scale == (0.3, 1.0)


def test_a_reference_file_loads_with_its_keys_translated(tmp_path):
    # the reference's in1k_vith14_ep300.yaml as it ships there: without our data.dataset and mask.mode
    data = yaml.safe_load((config_dir() / "in1k_vith14_ep300.yaml").read_text())
    assert {"copy_data", "use_bfloat16"} <= set(data["meta"]) and "ipe_scale" in data["optimization"]
    del data["data"]["dataset"], data["mask"]["mode"]
    data["meta"]["use_bfloat16"] = False
    p = tmp_path / "in1k_vith14_ep300.yaml"
    p.write_text(yaml.safe_dump(data))
    assert load_config(str(p)).meta.precision == "fp32"
    assert load_config(str(p), ["meta.use_bfloat16=true"]).meta.precision == "auto"
    assert load_config("in1k_vith14_ep300").meta.precision == "auto"  # the shipped copy says true
    names = {f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)}
    assert not names & set(REFERENCE_KEYS), "a translated key is also a field"
    assert translate_reference_keys(data) is not data and data["meta"]["use_bfloat16"] is False  # input untouched


@pytest.mark.parametrize("overrides,message", [
    (["meta.use_bfloat16=false", "meta.precision=bf16"],
     "meta.use_bfloat16=false means meta.precision=fp32, which contradicts meta.precision=bf16: drop one"),
    (["meta.use_bfloat16=false", "meta.precision=auto"],
     "meta.use_bfloat16=false means meta.precision=fp32, which contradicts meta.precision=auto: drop one"),
    (["optimization.ipe_scale=1.25"], "schedules longer than the run are not supported; optimization.max_steps "
                                      "stops a run early"),
])
def test_reference_keys_that_contradict_ours_fail_naming_both(overrides, message):
    with pytest.raises(ConfigError, match="^command line: " + re.escape(", ".join(overrides)) + ": "
                       + re.escape(message)) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_reference_keys_that_agree_with_ours_translate():
    assert load_config(None, ["meta.use_bfloat16=false"]).meta.precision == "fp32"
    assert load_config(None, ["meta.use_bfloat16=false", "meta.precision=fp32"]).meta.precision == "fp32"
    assert load_config(None, ["meta.use_bfloat16=true", "meta.precision=fp16"]).meta.precision == "fp16"
    assert load_config(None, ["meta.copy_data=true", "optimization.ipe_scale=1"]) == load_config()


@pytest.mark.parametrize("key", list(REMOVED_KEYS))
def test_a_removed_key_fails_in_one_line_saying_why(key):
    with pytest.raises(ConfigError, match=f"^command line: {re.escape(key)}=1: {re.escape(key)} was removed: ") as e:
        load_config(None, [f"{key}=1"])
    assert "\n" not in str(e.value) and len(str(e.value)) > len(f"command line: {key}=1: {key} was removed: ") + 20


def test_the_cpu_rungs_set_a_time_limit_and_their_precision():
    for name, precision in (("fmnist_cpu", "auto"), ("fmnist_cpu_fp32", "fp32")):
        cfg = load_config(name)
        # the training limit leaves the probe and start-up inside the quick start's quarter hour
        assert 0 < cfg.optimization.minutes <= 11 and cfg.meta.precision == precision


def test_every_key_is_documented():
    text = describe()
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory):
            assert f.metadata.get("help"), f"{sec.name}.{f.name} has no help"
            assert f"`{sec.name}.{f.name}`" in text


def test_encoder_names_match_the_model_registry():
    assert set(ENCODER_NAMES) == set(VIT_SIZES)
    assert ENCODER_WIDTH_HEADS == {k: (v[0], v[2]) for k, v in VIT_SIZES.items()}


def test_resolved_config_round_trips(tmp_path):
    from ijepa.config import config_from_dict, save_config
    cfg = load_config(None, ["optimization.lr=0.003"])
    save_config(cfg, tmp_path / "c.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text())) == cfg
    assert (config_dir() / "fmnist_cpu.yaml").is_file()


def test_exponent_floats_without_a_dot_are_numbers():
    cfg = load_config(None, ["optimization.lr=5e-4", "optimization.start_lr=1e-5"])
    assert cfg.optimization.lr == 5e-4 and cfg.optimization.start_lr == 1e-5


def test_configuration_doc_is_current():
    from pathlib import Path
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert describe().strip() in doc, "regenerate docs/configuration.md with `ijepa config --keys`"


def test_init_std_sets_the_encoders_init_only():
    from ijepa.train.ijepa import IJEPA
    spec = {"image_size": (28, 28), "in_chans": 1, "mean": (0.5,), "std": (0.5,)}
    stds = {}
    for init_std in (0.02, 0.1):
        torch.manual_seed(0)
        m = IJEPA.from_config(load_config(None, [f"meta.init_std={init_std}"]), spec)
        enc, pred, tgt = m.encoder, m.predictor, m.target_encoder
        stds[init_std] = (enc.blocks[0].mlp.fc1.weight.std().item(),
                          pred.predictor_blocks[0].mlp.fc1.weight.std().item())
        assert torch.equal(enc.blocks[0].mlp.fc1.weight, tgt.blocks[0].mlp.fc1.weight)
    assert abs(stds[0.02][0] - 0.02) < 0.002 and abs(stds[0.1][0] - 0.1) < 0.01
    assert stds[0.02][1] == pytest.approx(stds[0.1][1])  # the predictor keeps the reference's init


def test_encoder_shape_keys_override_the_size_and_survive_a_checkpoint(tmp_path):
    from ijepa import load
    from ijepa.train.checkpoint import save_checkpoint
    from ijepa.train.ijepa import IJEPA
    spec = {"image_size": (28, 28), "in_chans": 1, "mean": (0.5,), "std": (0.5,)}
    cfg = load_config(None, ["meta.model_name=vit_small", "meta.enc_depth=2", "meta.enc_embed_dim=512",
                             "meta.enc_num_heads=4", "meta.enc_mlp_ratio=2"])
    m = IJEPA.from_config(cfg, spec)
    enc, pred, tgt = m.encoder, m.predictor, m.target_encoder
    assert (enc.embed_dim, enc.depth, enc.num_heads, enc.blocks[0].mlp.fc1.out_features) == (512, 2, 4, 1024)
    assert pred.predictor_embed.in_features == 512
    # the keys the training loop writes; 4 heads at width 512 is not what a guess from the weights gives (8)
    save_checkpoint({"format": "ijepa", "target_encoder": tgt.state_dict(), "arch": {"encoder": tgt.arch_dict()},
                     "input_spec": spec}, tmp_path / "c.pth.tar")
    back = load(tmp_path / "c.pth.tar")
    assert (back.embed_dim, back.depth, back.num_heads, back.mlp_ratio) == (512, 2, 4, 2.0)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(back.eval()(x), tgt.eval()(x))


def test_config_module_stays_torch_free():
    import subprocess
    import sys
    code = "import sys, ijepa.config; ijepa.config.load_config(); assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_mask_section_is_the_samplers_config():
    from ijepa.config_sections import MaskConfig
    from ijepa.masks import MaskConfig as SamplerConfig
    from ijepa.masks import MultiBlockMaskSampler

    cfg = load_config(None, ["mask.min_keep=4", "mask.pred_mask_scale=[0.1,0.2]"])
    assert SamplerConfig is MaskConfig and type(cfg.mask) is MaskConfig
    sampler = MultiBlockMaskSampler(cfg.data.crop_size // cfg.mask.patch_size, cfg.mask)
    assert sampler.cfg == cfg.mask and sampler.cfg is not cfg.mask  # the sampler keeps a private copy
    # one set of rules, whichever way the config is made
    with pytest.raises(ConfigError, match=r"pred_mask_scale=\[0\.0,0\.2\]: expected \[min, max\] with 0\.0 < min"):
        load_config(None, ["mask.pred_mask_scale=[0.0,0.2]"])
    with pytest.raises(ConfigError, match=r"mask\.pred_mask_scale: expected \[min, max\] with 0\.0 < min"):
        MaskConfig(pred_mask_scale=(0.0, 0.2))
