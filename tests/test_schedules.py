import pytest

from ijepa.config import OptimizationConfig
from ijepa.train.schedules import Schedules


def make(epochs=10, ipe=100, warmup=2, ipe_scale=1.0):
    opt = OptimizationConfig(epochs=epochs, warmup=warmup, ipe_scale=ipe_scale, start_lr=2e-4, lr=1e-3,
                             final_lr=1e-6, weight_decay=0.04, final_weight_decay=0.4, ema=(0.996, 1.0))
    return Schedules.from_config(opt, ipe)


def test_lr_warmup_then_cosine():
    s = make()
    assert s.lr_at(0) == pytest.approx(2e-4)
    assert s.lr_at(100) == pytest.approx(2e-4 + 0.5 * (1e-3 - 2e-4))
    assert s.lr_at(200) == pytest.approx(1e-3)
    assert s.lr_at(600) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)  # halfway through the cosine
    assert s.lr_at(1000) == pytest.approx(1e-6)
    assert s.lr_at(5000) == pytest.approx(1e-6)  # never below final_lr


def test_weight_decay_cosine_increase():
    s = make()
    assert s.wd_at(0) == pytest.approx(0.04)
    assert s.wd_at(500) == pytest.approx(0.22)
    assert s.wd_at(1000) == pytest.approx(0.4)
    assert s.wd_at(2000) == pytest.approx(0.4)


def test_momentum_linear():
    s = make()
    assert s.momentum_at(0) == pytest.approx(0.996)
    assert s.momentum_at(250) == pytest.approx(0.997)
    assert s.momentum_at(1000) == pytest.approx(1.0)


def test_ipe_scale_stretches_the_schedules():
    s = make(ipe_scale=1.25)
    assert s.total_steps == 1250
    assert s.momentum_at(1000) == pytest.approx(0.996 + 0.004 * 0.8)
