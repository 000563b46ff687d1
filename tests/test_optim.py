import math

import pytest
import torch
import torch.nn as nn

from ijepa.models import build_encoder
from ijepa.optim import layer_id, no_weight_decay, param_groups, set_lr, warmup_cosine


def test_warmup_cosine_endpoints_floor_and_the_two_warmup_conventions():
    total, warm, peak, final = 100, 10, 1e-3, 1e-6
    assert warmup_cosine(0, total, warm, peak, start=2e-4, final=final) == 2e-4  # the reference: starts at start
    assert warmup_cosine(5, total, warm, peak, start=2e-4, final=final) == pytest.approx(2e-4 + 0.5 * (peak - 2e-4))
    assert warmup_cosine(0, total, warm, peak, warmup_offset=1) == pytest.approx(peak / warm)  # MAE's first step
    assert warmup_cosine(warm - 1, total, warm, peak, warmup_offset=1) == pytest.approx(peak)
    assert warmup_cosine(warm, total, warm, peak, final=final) == peak
    assert warmup_cosine(55, total, warm, peak, final=final) == pytest.approx(final + (peak - final) / 2)
    assert warmup_cosine(total, total, warm, peak, final=final) == pytest.approx(final)
    assert warmup_cosine(10 * total, total, warm, peak, final=final) == final  # held, never below
    lrs = [warmup_cosine(s, total, warm, peak, final=final) for s in range(warm, total + 5)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert warmup_cosine(3, 3, 0, peak) == 0.0 and warmup_cosine(0, 1, 0, peak) == peak  # no warm-up


def test_warmup_cosine_over_a_fraction_of_a_budget():
    # the pixel decoder schedules over the fraction of its time budget spent: steps are floats in [0, 1]
    assert warmup_cosine(0.025, 1.0, 0.05, 2.0) == pytest.approx(1.0)
    assert warmup_cosine(0.05, 1.0, 0.05, 2.0) == pytest.approx(2.0)
    assert warmup_cosine(0.525, 1.0, 0.05, 2.0) == pytest.approx(1.0)
    assert warmup_cosine(1.0, 1.0, 0.05, 2.0) == pytest.approx(0.0, abs=1e-12)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.query = nn.Parameter(torch.zeros(1, 2, 3))   # a 3-D table: decayed, as the reference
        self.scale = nn.Parameter(torch.ones(3))          # 1-D, not named bias: no decay
        self.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)


def test_param_groups_one_no_weight_decay_rule_and_frozen_left_out():
    m = _Tiny()
    groups = param_groups(m, 0.05)
    assert [g["apply_wd"] for g in groups] == [True, False]  # decayed first
    assert groups[0]["names"] == ["query", "lin.weight"] and groups[0]["weight_decay"] == 0.05
    assert groups[1]["names"] == ["scale", "lin.bias", "norm.weight", "norm.bias"]
    assert groups[1]["weight_decay"] == 0.0
    assert {g["lr_scale"] for g in groups} == {1.0} and all("layer_id" not in g for g in groups)
    params = dict(m.named_parameters())
    assert all(p is params[n] for g in groups for n, p in zip(g["names"], g["params"]))
    assert no_weight_decay("x.bias", torch.zeros(2, 2)) and not no_weight_decay("x.weight", torch.zeros(2, 2))


def test_param_groups_layer_decay_on_a_vit():
    depth, decay = 3, 0.75
    enc = build_encoder("vit_tiny", patch_size=4, img_size=16, in_chans=1, depth=depth)
    groups = param_groups(enc, 0.05, layer_decay=decay)
    assert [g["layer_id"] for g in groups] == sorted(g["layer_id"] for g in groups)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert sorted(n for g in groups for n in g["names"]) == sorted(trainable)  # each exactly once
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["patch_embed.proj.weight"] == decay ** 4
    assert scale["blocks.0.attn.qkv.weight"] == decay ** 3
    assert scale["blocks.2.mlp.fc2.bias"] == decay
    assert scale["norm.weight"] == 1.0
    assert layer_id("encoder.blocks.1.norm1.weight", depth) == 2 and layer_id("head.weight", depth) == depth + 1
    assert layer_id("encoder.pos_embed", depth) == 0


def test_set_lr_scales_per_group_and_schedules_only_decayed_groups():
    m = _Tiny()
    opt = torch.optim.AdamW(param_groups(m, 0.05), lr=1.0)
    opt.param_groups[1]["lr_scale"] = 0.5
    set_lr(opt, 0.01, 0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.005]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    # groups written before lr_scale existed (old checkpoints' optimizer states) take the lr as it is
    del opt.param_groups[0]["lr_scale"]
    set_lr(opt, 0.02)
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["weight_decay"] == 0.3
    assert math.isclose(opt.param_groups[1]["lr"], 0.01)
