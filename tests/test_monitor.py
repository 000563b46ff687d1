"""Tests for ijepa.train.monitor: the collapse checks and the online k-NN run beside training."""

from __future__ import annotations

import pytest
import torch

from ijepa.models.vit import CPU_CHUNK_TOKENS, build_encoder
from ijepa.precision import Precision
from ijepa.train import monitor


def tiny_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("vit_tiny", patch_size=4, img_size=32, in_chans=1, depth=2).train()


def test_checks_slice_the_batch_in_eval_mode_and_leave_training_mode_alone():
    enc = tiny_encoder()
    seen = []
    enc.blocks[0].register_forward_hook(lambda m, i, o: seen.append((m.training, o.shape[0])))
    x, y = torch.randn(96, 1, 32, 32), torch.arange(96) % 4
    stats = monitor.collapse_stats(enc, x)
    monitor.online_knn(enc, x, y, x[:24], y[:24], batch_size=48)
    rows = CPU_CHUNK_TOKENS // 64  # images per slice at 64 tokens each
    assert seen and all(not training and n <= rows for training, n in seen)  # eval mode, sliced, every pass
    assert enc.training  # restored afterwards
    with torch.no_grad():  # slicing changes no feature, so the stats are those of one whole-batch pass
        enc.eval()
        whole = enc(x).mean(1)
    assert stats["rankme"] == pytest.approx(monitor.rankme(whole), rel=1e-5)
    assert stats["target_std"] == pytest.approx(monitor.feature_std(whole), rel=1e-5)


@pytest.mark.parametrize("name, autocast", [("fp32", None), ("bf16", torch.bfloat16)])
def test_monitor_runs_in_the_runs_precision_once_per_step(name, autocast):
    enc = tiny_encoder()
    seen = []
    enc.register_forward_pre_hook(
        lambda m, args: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    x, y = torch.randn(16, 1, 32, 32), torch.arange(16) % 4
    mon = monitor.Monitor(enc, x, (x, y, x[:8], y[:8]), Precision(name, "cpu"))
    stats = mon(4)
    assert set(stats) == {"target_std", "rankme", "knn"} and seen and set(seen) == {autocast}
    calls = len(seen)
    assert mon(4) is stats and len(seen) == calls  # asked again: the same stats, no new pass
    assert "knn" not in mon(8, knn=False)
