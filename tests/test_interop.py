"""ijepa.interop: parity with transformers' and timm's I-JEPA models, round trips, the reference's and our
checkpoint layouts, and one clear error for each way a file can be wrong.

Everything runs on CPU with tiny random-weight models built by the tests (conftest.py); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import reference_file, tiny_predictor, tiny_vit

import ijepa.interop as interop
from ijepa.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointReadError,
    UnknownFormatError,
    UnsafeCheckpointError,
)
from ijepa.interop import hf as hf_fmt
from ijepa.models.predictor import VisionTransformerPredictor
from ijepa.models.vit import VisionTransformer

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = 1e-5


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _hf_model(patch: int = 14, image: int = 224, depth: int = 4, eps: float | None = 1e-6, seed: int = 0):
    torch.manual_seed(seed)
    kw = {} if eps is None else {"layer_norm_eps": eps}
    cfg = transformers.IJepaConfig(hidden_size=192, num_hidden_layers=depth, num_attention_heads=3,
                                   intermediate_size=768, image_size=image, patch_size=patch, **kw)
    return transformers.IJepaModel(cfg).eval()


def _images(h: int = 224, w: int = 224, n: int = 1, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [14, 16])
def test_transformers_parity_native_non_square_and_larger(tmp_path: Path, patch: int) -> None:
    model = _hf_model(patch=patch)
    model.save_pretrained(tmp_path / "hf")
    enc = interop.load(tmp_path / "hf")
    assert isinstance(enc, VisionTransformer) and enc.patch_size == patch and enc.depth == 4
    assert enc.num_heads == 3 and enc.norm_eps == 1e-6
    assert "transformers IJepaModel" in enc.source and "context encoder" in enc.source
    with torch.no_grad():
        for h, w, interp in ((224, 224, False), (224, 280, True), (280, 280, True)):
            x = _images(h, w)
            ref = model(pixel_values=x, interpolate_pos_encoding=interp).last_hidden_state
            assert _max_diff(enc(x), ref) <= TOL, (h, w)


def test_transformers_layer_norm_eps_comes_from_config_json(tmp_path: Path) -> None:
    default = _hf_model(eps=None)  # IJepaConfig's own default, 1e-12
    default.save_pretrained(tmp_path / "d")
    assert json.loads((tmp_path / "d" / "config.json").read_text())["layer_norm_eps"] == 1e-12
    enc = interop.load(tmp_path / "d")
    assert enc.norm_eps == 1e-12
    assert all(m.eps == 1e-12 for m in enc.modules() if isinstance(m, torch.nn.LayerNorm))
    x = _images()
    with torch.no_grad():
        assert _max_diff(enc(x), default(pixel_values=x).last_hidden_state) <= TOL
    _hf_model(eps=1e-6).save_pretrained(tmp_path / "e")
    assert interop.load(tmp_path / "e").blocks[0].norm1.eps == 1e-6


def test_transformers_in_memory_layout_prefix_and_preprocessor(tmp_path: Path) -> None:
    model = _hf_model(patch=16)
    mem = model.state_dict()
    # transformers 5 holds other names in memory than it writes; both must load.
    assert any(".q_proj." in k for k in mem) and not any("encoder.layer" in k for k in mem)
    d = tmp_path / "mem"
    model.save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save(mem, d / "pytorch_model.bin")  # a pickle, read with weights_only=True
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"do_center_crop": True, "crop_size": {"height": 192, "width": 160}, "size": {"shortest_edge": 256},
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    enc = interop.load(d)
    assert enc.input_spec["image_size"] == (192, 160)
    assert enc.input_spec["mean"] == (0.5, 0.5, 0.5) and enc.input_spec["std"] == (0.25, 0.25, 0.25)
    x = _images()
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
        assert _max_diff(enc(x), ref) <= TOL
        # A bare state dict (no config.json): heads come from the size registry (width 192 -> 3).
        head = {"classifier.weight": torch.zeros(5, 192)}
        bare = interop.load({"ijepa." + k: v for k, v in mem.items()} | head)
        assert bare.num_heads == 3 and "ignored: classifier" in bare.source
        assert _max_diff(bare(x), ref) <= TOL


def test_export_to_transformers_loads_with_transformers_alone(tmp_path: Path) -> None:
    enc = tiny_vit(patch_size=14, img_size=(224, 168))  # non-square native resolution
    enc.input_spec = {"image_size": (224, 168), "in_chans": 3, "mean": (0.4, 0.4, 0.4),
                      "std": (0.2, 0.3, 0.2)}
    out = interop.export(enc, tmp_path / "hf", to="hf", source="unit test")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "ijepa" and cfg["layer_norm_eps"] == 1e-6 and cfg["image_size"] == [224, 168]
    pp = json.loads((out / "preprocessor_config.json").read_text())
    assert pp["size"] == {"height": 224, "width": 168} and pp["image_std"] == [0.2, 0.3, 0.2]
    model, info = transformers.IJepaModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    x = _images(224, 168)
    with torch.no_grad():
        assert _max_diff(model.eval()(pixel_values=x).last_hidden_state, enc(x)) <= TOL
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert tuple(processor.image_mean) == (0.4, 0.4, 0.4)
    assert processor(torch.zeros(3, 300, 400), return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 168)
    back = interop.load(out)
    assert back.source == "transformers IJepaModel (unit test)"
    assert back.input_spec == enc.input_spec
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), enc.state_dict().values()))


# ----------------------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------------------

def _timm_model(seed: int = 0):
    torch.manual_seed(seed)
    # Built as timm builds its I-JEPA ViTs (no class token, average pooling, fc_norm off), shrunk.
    m = timm.create_model("vit_huge_patch14_gap_224", pretrained=False, embed_dim=192, depth=2, num_heads=3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def test_timm_parity(tmp_path: Path) -> None:
    model = _timm_model()
    assert model.num_prefix_tokens == 0 and isinstance(model.fc_norm, torch.nn.Identity)
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "timm.safetensors")
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    x = _images()
    with torch.no_grad():
        ref = model.forward_features(x)
        for f in ("timm.safetensors", "timm.pth"):
            enc = interop.load(tmp_path / f)
            assert enc.patch_size == 14 and enc.depth == 2 and enc.num_heads == 3
            assert "timm" in enc.source
            assert _max_diff(enc(x), ref) <= TOL


def test_export_to_timm_round_trips(tmp_path: Path) -> None:
    enc = tiny_vit(patch_size=14, depth=2)
    x = _images()
    with torch.no_grad():
        want = enc(x)
        # A directory in timm's own local layout: timm builds and loads it by itself.
        d = interop.export(enc, tmp_path / "timm_dir", to="timm")
        m = timm.create_model(f"local-dir:{d.parent}", pretrained=True).eval()
        assert _max_diff(m.forward_features(x), want) <= TOL
        # A single .safetensors + sidecar: the sidecar names the architecture, load_state_dict takes the file.
        f = interop.export(enc, tmp_path / "enc.safetensors", to="timm")
        side = json.loads(f.with_suffix(".json").read_text())
        m2 = timm.create_model(side["architecture"], pretrained=False, **side["model_args"]).eval()
        from safetensors.torch import load_file

        m2.load_state_dict(load_file(f))
        assert _max_diff(m2.forward_features(x), want) <= TOL
        back = interop.load(f)
        assert back.input_spec == enc.input_spec and back.num_heads == enc.num_heads
        assert _max_diff(back(x), want) == 0


# ----------------------------------------------------------------------------------------------------------
# our export, the reference's .pth.tar, our training checkpoints
# ----------------------------------------------------------------------------------------------------------

def test_native_export_round_trip_is_exact(tmp_path: Path) -> None:
    enc = tiny_vit(embed_dim=96, num_heads=4, depth=2, mlp_ratio=48 / 11, img_size=(64, 96), patch_size=16)
    enc.input_spec = {"image_size": (64, 96), "in_chans": 3, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    pred = tiny_predictor(enc)
    f = interop.export(enc, tmp_path / "enc.safetensors", predictor=pred, source="unit test")
    back, back_pred = interop.load(f, with_predictor=True)
    assert back.arch_dict() == enc.arch_dict() and back.input_spec == enc.input_spec
    assert back.source == "ijepa export (unit test)"
    for a, b in ((back, enc), (back_pred, pred)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = _images(64, 96)
    with torch.no_grad():
        assert torch.equal(back(x), enc(x))
    assert back_pred.one_pass is False
    # the one-pass predictor's mode is not in its weights: the export's arch record must carry it
    pred.one_pass = True
    f = interop.export(enc, tmp_path / "enc1.safetensors", predictor=pred)
    assert interop.load(f, with_predictor=True)[1].one_pass is True


def test_reference_pth_tar_both_encoders_and_predictor(tmp_path: Path) -> None:
    ctx, tgt = tiny_vit(seed=0, depth=2), tiny_vit(seed=1, depth=2)
    pred = tiny_predictor(ctx)
    f = reference_file(tmp_path / "IN1K-tiny.pth.tar", ctx, tgt, pred)
    x = _images(n=2)
    with torch.no_grad():
        default = interop.load(f)
        assert default.source == "reference .pth.tar (epoch 300): target_encoder"
        assert torch.equal(default(x), tgt(x))
        enc, p = interop.load(f, which="encoder", with_predictor=True)
        assert enc.source.endswith(": encoder") and torch.equal(enc(x), ctx(x))
        assert isinstance(p, VisionTransformerPredictor) and p.depth == 2 and p.num_heads == ctx.num_heads
        n = enc.num_patches
        masks_enc = [torch.arange(0, n // 2).repeat(2, 1)]
        masks_pred = [torch.arange(n // 2, n // 2 + 10).repeat(2, 1), torch.arange(n - 7, n).repeat(2, 1)]
        z = p(enc(x, masks_enc), masks_enc, masks_pred[:1])
        assert z.shape == (2, 10, enc.embed_dim)
        assert torch.equal(z, pred(ctx(x, masks_enc), masks_enc, masks_pred[:1]))
        assert p(enc(x, masks_enc), masks_enc, masks_pred[1:]).shape == (2, 7, enc.embed_dim)
    with pytest.raises(CheckpointError, match="which='momentum'"):
        interop.load(f, which="momentum")


def test_convert_reference_to_each_format(tmp_path: Path) -> None:
    ctx, tgt = tiny_vit(seed=0, depth=2, patch_size=14), tiny_vit(seed=1, depth=2, patch_size=14)
    f = reference_file(tmp_path / "ref.pth.tar", ctx, tgt, tiny_predictor(ctx))
    x = _images()
    with torch.no_grad():
        want = tgt(x)
        hf_dir = interop.convert(f, tmp_path / "hf", to="hf")
        model = transformers.IJepaModel.from_pretrained(hf_dir).eval()
        assert _max_diff(model(pixel_values=x).last_hidden_state, want) <= TOL
        assert "target_encoder" in interop.load(hf_dir).source
        t = interop.convert(f, tmp_path / "t.safetensors", to="timm")
        assert "timm" in interop.load(t).source
        n = interop.convert(f, tmp_path / "n.safetensors", to="ijepa", with_predictor=True)
        enc, p = interop.load(n, with_predictor=True)
        assert torch.equal(enc(x), want) and p is not None
    with pytest.raises(CheckpointError, match="encoder only"):
        interop.convert(f, tmp_path / "bad", to="hf", with_predictor=True)


def test_training_checkpoint_layout(tmp_path: Path) -> None:
    # width 96 is not a registered size: the head count must come from the checkpoint's `arch`.
    small = dict(embed_dim=96, num_heads=2, depth=2)
    ctx, tgt = tiny_vit(seed=0, **small), tiny_vit(seed=1, **small)
    pred = tiny_predictor(ctx)
    spec = {"image_size": [224, 224], "in_chans": 3, "mean": [0.3, 0.3, 0.3], "std": [0.2, 0.2, 0.2]}
    torch.save({
        "encoder": ctx.state_dict(), "predictor": pred.state_dict(), "target_encoder": tgt.state_dict(),
        "opt": {}, "scaler": None, "epoch": 3, "loss": 0.5, "batch_size": 8, "world_size": 1, "lr": 1e-3,
        "format": "ijepa", "version": 1, "step": 120, "input_spec": spec,
        "arch": {"encoder": tgt.arch_dict(), "predictor": pred.arch_dict()}, "config": {"meta": {}},
    }, tmp_path / "jepa-latest.pth.tar")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing guessed
        enc, p = interop.load(tmp_path / "jepa-latest.pth.tar", with_predictor=True)
    assert enc.num_heads == 2 and p.num_heads == 2 and p.predictor_embed_dim == 96
    assert enc.input_spec == {"image_size": (224, 224), "in_chans": 3, "mean": (0.3,) * 3, "std": (0.2,) * 3}
    assert enc.source == "ijepa training checkpoint (epoch 3, step 120): target_encoder"
    x = _images()
    with torch.no_grad():
        assert torch.equal(enc(x), tgt(x))


def test_img_size_resamples_the_position_table_like_forward(tmp_path: Path) -> None:
    enc = tiny_vit(depth=2)
    f = interop.export(enc, tmp_path / "e.safetensors")
    big = interop.load(f, img_size=(256, 320))
    assert big.img_size == (256, 320) and big.pos_embed.shape[1] == 16 * 20
    assert big.input_spec["image_size"] == (256, 320) and "resampled 14x14 -> 16x20" in big.source
    x = _images(256, 320)
    with torch.no_grad():
        assert _max_diff(big(x), enc(x)) <= TOL


# ----------------------------------------------------------------------------------------------------------
# failures: one clear error each
# ----------------------------------------------------------------------------------------------------------

def test_wrong_architecture_names_the_keys(tmp_path: Path) -> None:
    f = interop.export(tiny_vit(depth=4), tmp_path / "four.safetensors")
    with pytest.raises(CheckpointMismatchError) as e:
        interop.load(f, arch={"depth": 2})
    msg = str(e.value)
    assert "does not fit VisionTransformer(" in msg and "depth=2" in msg and str(f) in msg
    assert "24 unexpected: blocks.2.attn.proj.bias" in msg and "(+19 more)" in msg
    assert e.value.unexpected and not e.value.missing
    with pytest.raises(CheckpointMismatchError, match=r"96 missing: blocks\.4\..*53 mis-shaped: pos_embed "
                                                      r"file \(1, 196, 192\) vs model \(1, 196, 384\)"):
        interop.load(f, arch="vit_small")


def test_missing_keys_and_strict_false(tmp_path: Path) -> None:
    sd = tiny_vit(depth=2).state_dict()
    del sd["norm.weight"], sd["blocks.1.mlp.fc2.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match=r"2 missing: blocks.1.mlp.fc2.weight, norm.weight"):
        interop.load(tmp_path / "partial.pth")
    with pytest.warns(UserWarning, match="Loaded the matching keys only"):
        enc = interop.load(tmp_path / "partial.pth", strict=False)
    assert torch.equal(enc.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("name", ["ckpt.pth.tar", "enc.safetensors"])
def test_truncated_file(tmp_path: Path, name: str) -> None:
    good = tmp_path / ("good" + name)
    if name.endswith(".safetensors"):
        interop.export(tiny_vit(depth=1), good)
    else:
        reference_file(good, tiny_vit(depth=1), tiny_vit(depth=1), tiny_predictor(tiny_vit(depth=1)))
    bad = tmp_path / name
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointReadError, match=rf"cannot read {bad}: the file is truncated, corrupt"):
        interop.load(bad)


class _Payload:
    """Unpickling this would create a folder: the test checks it never happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_pickle_with_arbitrary_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    f = tmp_path / "evil.pth.tar"
    torch.save({"encoder": {"pos_embed": torch.zeros(1)}, "hook": _Payload(marker)}, f)
    with pytest.raises(UnsafeCheckpointError,
                       match=rf"refused to unpickle {re.escape(str(f))}: .*\(it references os\.makedirs\)"):
        interop.load(f)
    assert not marker.exists()


def test_missing_path_and_unknown_content(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth.tar"
    with pytest.raises(CheckpointNotFoundError, match=f"no checkpoint at {missing}") as e:
        interop.load(missing)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UnknownFormatError, match="not a checkpoint layout we know"):
        interop.load(tmp_path / "other.pt")
    (tmp_path / "d").mkdir()
    with pytest.raises(UnknownFormatError, match="without config.json"):
        interop.load(tmp_path / "d")


def test_key_tables_invert() -> None:
    sd = tiny_vit(depth=2).state_dict()
    hub = hf_fmt.to_hf(sd)
    assert "encoder.layer.1.attention.attention.value.weight" in hub and "layernorm.bias" in hub
    back, dropped = hf_fmt.from_hf(hub)
    assert not dropped and back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
