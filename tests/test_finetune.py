"""Fine-tuning (ijepa.eval.finetune): layer-wise lr decay, transformers parity of the classifier export, learning
on Fashion-MNIST, label smoothing in the loss, and the `ijepa finetune` command (CPU, seconds each)."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

import ijepa
from ijepa.cli import build_parser, main
from ijepa.config import ConfigError
from ijepa.data.fashion_mnist import DatasetNotFoundError, load_fashion_mnist
from ijepa.data.preprocess import prepare_images
from ijepa.eval.finetune import (
    ClassifierModel,
    FinetuneConfig,
    cosine_lr,
    evaluate_classifier,
    finetune,
    layer_id_for,
    load_classifier,
    param_groups_lrd,
    save_classifier,
    save_hf_classifier,
)
from ijepa.models.vit import build_encoder


def _encoder(seed: int = 0, patch: int = 7, dim: int = 48, depth: int = 3, heads: int = 3):
    torch.manual_seed(seed)
    return build_encoder("vit_tiny", patch_size=patch, img_size=28, in_chans=1, embed_dim=dim, depth=depth,
                         num_heads=heads)


@pytest.fixture(scope="module")
def fmnist():
    try:
        xtr, ytr = load_fashion_mnist(train=True)
        xte, yte = load_fashion_mnist(train=False)
    except DatasetNotFoundError as e:
        pytest.skip(str(e))
    return xtr, ytr, xte, yte


# ------------------------------------------------------------------------------------ optimiser groups

def test_layer_wise_lr_decay_scales_and_no_weight_decay_sets():
    depth, decay, wd = 3, 0.75, 0.05
    model = ClassifierModel(_encoder(depth=depth), num_classes=4)
    model.encoder.pos_embed.requires_grad_(True)  # normally frozen; trainable here to check where it would go
    groups = param_groups_lrd(model, wd, decay)

    names = [n for g in groups for n in g["names"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable)  # every trainable parameter exactly once

    def expected_layer(name: str) -> int:
        if name.startswith("encoder.patch_embed.") or name == "encoder.pos_embed":
            return 0
        m = re.match(r"encoder\.blocks\.(\d+)\.", name)
        return int(m.group(1)) + 1 if m else depth + 1  # final norm and head

    for g in groups:
        for name in g["names"]:
            lid = expected_layer(name)
            assert g["layer_id"] == lid == layer_id_for(name, depth), name
            assert g["lr_scale"] == decay ** (depth + 1 - lid), name
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["encoder.patch_embed.proj.weight"] == scale["encoder.pos_embed"] == decay ** 4
    assert scale["encoder.blocks.0.attn.qkv.weight"] == decay ** 3
    assert scale["encoder.blocks.2.mlp.fc2.bias"] == decay ** 1
    assert scale["encoder.norm.weight"] == scale["head.weight"] == scale["head.bias"] == 1.0

    no_wd = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    # the one rule of ijepa.optim (pretraining's too): biases and 1-d parameters; a trainable table is a matrix
    expected_no_wd = {n for n in trainable if n.endswith(".bias") or ".norm" in n}
    assert no_wd == expected_no_wd
    assert "encoder.blocks.1.norm1.weight" in no_wd and "encoder.norm.weight" in no_wd
    decayed = {n for g in groups if g["weight_decay"] == wd for n in g["names"]}
    assert decayed == set(trainable) - expected_no_wd
    assert {"head.weight", "encoder.patch_embed.proj.weight", "encoder.blocks.2.attn.qkv.weight"} <= decayed

    # frozen parameters are left out; layer_decay 1 switches the decay off
    model.encoder.pos_embed.requires_grad_(False)
    groups = param_groups_lrd(model, wd, 1.0)
    assert "encoder.pos_embed" not in {n for g in groups for n in g["names"]}
    assert {g["lr_scale"] for g in groups} == {1.0}
    # torch's AdamW takes the groups as they are (extra keys ride along)
    torch.optim.AdamW(groups, lr=1e-3)


def test_cosine_schedule_and_config_validation():
    total, warm, peak, floor = 100, 10, 1e-3, 1e-6
    assert cosine_lr(0, total, warm, peak, floor) == pytest.approx(peak / warm)
    assert cosine_lr(warm - 1, total, warm, peak, floor) == pytest.approx(peak)
    assert cosine_lr(warm, total, warm, peak, floor) == pytest.approx(peak)
    assert cosine_lr(55, total, warm, peak, floor) == pytest.approx(floor + (peak - floor) / 2)
    assert cosine_lr(total, total, warm, peak, floor) == pytest.approx(floor)
    lrs = [cosine_lr(s, total, warm, peak, floor) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert FinetuneConfig(lr=1e-3, batch_size=512).peak_lr() == pytest.approx(2e-3)

    for bad, field in [({"lr": -1.0}, "lr"), ({"layer_decay": 0.0}, "layer_decay"),
                       ({"layer_decay": 1.5}, "layer_decay"), ({"label_smoothing": 1.0}, "label_smoothing"),
                       ({"epochs": 0}, "epochs"), ({"epochs": 2, "warmup_epochs": 3}, "warmup_epochs"),
                       ({"dtype": "fp8"}, "dtype"), ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
                       ({"clip_grad": 0.0}, "clip_grad"), ({"drop_path": float("nan")}, "drop_path"),
                       ({"batch_size": 2.5}, "batch_size"), ({"lr": 1e-4, "min_lr": 1e-3}, "min_lr")]:
        with pytest.raises(ConfigError, match=rf"finetune\.{field}"):
            FinetuneConfig(**bad)
    assert FinetuneConfig.from_dict(FinetuneConfig(epochs=3).to_dict()) == FinetuneConfig(epochs=3)
    with pytest.raises(ConfigError, match="unknown finetune field"):
        FinetuneConfig.from_dict({"epoch": 3})


# ------------------------------------------------------------------------------------ transformers parity

def test_classifier_matches_transformers_and_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    labels = {i: name for i, name in enumerate(["ant", "bee", "cat", "dog", "eel"])}
    model = ClassifierModel(_encoder(seed=1, patch=4, depth=2), num_classes=5, id2label=labels).eval()
    torch.manual_seed(2)
    with torch.no_grad():  # a head that matters: MAE's tiny init would make every logit ~0
        model.head.weight.normal_(0, 0.5)
        model.head.bias.normal_(0, 0.5)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)
        assert torch.equal(ours, model.head(model.encoder(x).mean(dim=1)))

    hf_dir = save_hf_classifier(model, tmp_path / "hf")
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["architectures"] == ["IJepaForImageClassification"] and cfg["model_type"] == "ijepa"
    assert cfg["num_labels"] == 5 and cfg["id2label"]["3"] == "dog" and cfg["label2id"]["dog"] == 3
    hf, info = transformers.IJepaForImageClassification.from_pretrained(hf_dir, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    assert hf.config.id2label[3] == "dog"
    with torch.no_grad():
        theirs = hf.eval()(pixel_values=x).logits
    assert (theirs - ours).abs().max().item() <= 1e-5

    # ijepa.load reads the encoder from the classifier folder, dropping the head
    enc = ijepa.load(hf_dir)
    assert "ignored: classifier" in enc.source
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), model.encoder.state_dict().values()))
    # ... and both of our readers give the same classifier back
    for d in (hf_dir, save_classifier(model, tmp_path / "ours")):
        back = load_classifier(d)
        assert back.id2label == labels
        with torch.no_grad():
            assert torch.equal(back(x), ours)
    ours_enc = ijepa.load(tmp_path / "ours" / "encoder.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(ours_enc.state_dict().values(),
                                                 model.encoder.state_dict().values()))


# ------------------------------------------------------------------------------------ training

def test_finetuning_learns_fashion_mnist(fmnist, tmp_path):
    xtr, ytr, xte, yte = fmnist
    # a random-init encoder: the linear probe on its features reaches ~57% on this split; fine-tuning it for
    # 250 steps reached 61-65% over seeds 0-3 (chance: 10%)
    encoder = _encoder(seed=0, patch=7, dim=64, depth=2, heads=2)
    cfg = FinetuneConfig(epochs=4, batch_size=32, lr=4e-2, warmup_epochs=0.5, dtype="fp32",
                         random_resized_crop=False, hflip=False)
    val_x, val_y = xte[-1000:], yte[-1000:]
    res = finetune(encoder, xtr[:2000], ytr[:2000], val_x, val_y, cfg, tmp_path, progress=False)
    assert len(res["train_loss"]) == len(res["val_top1"]) == 4
    assert res["final_val_top1"] >= 0.45, res["val_top1"]
    assert res["train_loss"][-1] < res["train_loss"][0] - 0.5, res["train_loss"]
    assert res["model"].encoder is encoder  # trained in place

    rows = list(csv.DictReader(open(tmp_path / "finetune_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["val_top1"]) == pytest.approx(res["final_val_top1"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val_top1"] == pytest.approx(res["val_top1"]) and metrics["n_train"] == 2000
    assert metrics["config"]["lr"] == 4e-2 and metrics["peak_lr"] == pytest.approx(4e-2 * 32 / 256)
    # the saved model is the final one: it scores what the log says
    back = load_classifier(tmp_path / "model")
    assert evaluate_classifier(back, val_x, val_y, dtype="fp32")["top1"] == pytest.approx(res["final_val_top1"])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_enters_the_training_loss(fmnist, smoothing):
    xtr, ytr, _, _ = fmnist
    x, y = xtr[:128], ytr[:128]
    # lr 0: the model never moves, so the logged training loss is the loss of the returned model
    cfg = FinetuneConfig(epochs=1, batch_size=64, lr=0.0, min_lr=0.0, warmup_epochs=0, drop_path=0.0,
                         label_smoothing=smoothing, dtype="fp32", random_resized_crop=False, hflip=False,
                         head_init_std=1.0)  # a spread-out head, so that smoothing visibly changes the loss
    res = finetune(_encoder(), x, y, x[:8], y[:8], cfg, progress=False)
    with torch.no_grad():
        logp = F.log_softmax(res["model"](prepare_images(x, res["input_spec"])), dim=1)
    nll = -logp.gather(1, y[:, None]).squeeze(1).mean().item()
    uniform = -logp.mean(dim=1).mean().item()  # cross-entropy against the uniform distribution
    expected = (1 - smoothing) * nll + smoothing * uniform
    assert res["train_loss"][0] == pytest.approx(expected, rel=1e-5)
    assert abs(uniform - nll) > 0.1  # so the two parametrisations really test different losses
    if smoothing:
        assert res["train_loss"][0] != pytest.approx(nll, rel=1e-3)


# ------------------------------------------------------------------------------------ the command

def test_cli_finetune_writes_metrics_model_and_a_loadable_hf_dir(fmnist, tmp_path, capsys):
    enc = _encoder(seed=4, depth=2)
    src = ijepa.export(enc, tmp_path / "enc.safetensors")
    out, hf = tmp_path / "ft", tmp_path / "hf"

    # a bad value is a one-line config error naming the field, before anything is loaded or written
    assert main(["finetune", str(src), "--out", str(out), "--layer-decay", "0"]) == 2
    assert "finetune.layer_decay" in capsys.readouterr().err and not out.exists()

    assert main(["finetune", str(src), "--out", str(out), "--limit", "128", "--epochs", "1", "--batch-size", "64",
                 "--export-hf", str(hf), "--device", "cpu", "--dtype", "fp32", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "val top-1:" in printed and "fashion_mnist" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == metrics["n_val"] == 128 and metrics["num_classes"] == 10
    assert 0.0 <= metrics["final_val_top1"] <= 1.0 and metrics["export_hf"] == str(hf)
    assert metrics["classes"][9] == "Ankle boot"
    assert len(list(csv.DictReader(open(out / "finetune_log.csv")))) == 1

    tuned = ijepa.load(hf)  # the transformers folder reads back as an encoder
    ours = ijepa.load(out / "model" / "encoder.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), ours.state_dict().values()))
    assert not torch.equal(tuned.blocks[0].attn.qkv.weight, enc.blocks[0].attn.qkv.weight)  # it trained
    assert json.loads((hf / "config.json").read_text())["id2label"]["0"] == "T-shirt/top"


def test_image_folder_with_and_without_a_val_split(tmp_path):
    from PIL import Image

    from ijepa.eval.finetune import run_finetune

    g = torch.Generator().manual_seed(0)

    def write(root, per_class):
        for c, name in enumerate(["cat", "dog", "eel"]):
            (root / name).mkdir(parents=True)
            for i in range(per_class):  # RGB files of another size than the grey 28 px encoder's input
                img = torch.randint(0, 256, (40, 36, 3), dtype=torch.uint8, generator=g) // (c + 1)
                Image.fromarray(img.numpy()).save(root / name / f"{i}.png")

    write(tmp_path / "flat", 10)
    write(tmp_path / "split" / "train", 6)
    write(tmp_path / "split" / "val", 2)
    src = ijepa.export(_encoder(depth=1), tmp_path / "enc.safetensors")
    cfg = FinetuneConfig(epochs=1, batch_size=8, dtype="fp32")
    flat = run_finetune(src, tmp_path / "out1", cfg=cfg, images_dir=tmp_path / "flat", device="cpu",
                        progress=False)
    assert (flat["n_train"], flat["n_val"]) == (27, 3) and flat["classes"] == ["cat", "dog", "eel"]
    split = run_finetune(src, tmp_path / "out2", cfg=cfg, images_dir=tmp_path / "split", device="cpu",
                         progress=False, limit=4)
    assert (split["n_train"], split["n_val"]) == (4, 4) and split["split"] == "train / val"
    assert load_classifier(tmp_path / "out2" / "model").id2label == {0: "cat", 1: "dog", 2: "eel"}


def test_cli_help_lists_finetune_with_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "finetune" in capsys.readouterr().out
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["finetune"]
    known = {f.name for f in fields(FinetuneConfig)}
    defaults = FinetuneConfig()
    checked = 0
    for action in sub._actions:
        m = re.search(r"default ([0-9.e+-]+)", action.help or "")
        if action.dest in known and m:
            assert math.isclose(float(m.group(1)), getattr(defaults, action.dest)), action.dest
            checked += 1
    assert checked >= 8
