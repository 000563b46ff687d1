import pytest

from ijepa.config import ConfigError, load_config
from ijepa.config_sections import OptimizationConfig
from ijepa.train.horizon import Horizon, Replan
from ijepa.train.schedules import Schedules


def make(epochs=10, ipe=100, warmup=2, ema=(0.996, 1.0), ema_steps=None, total_steps=None, horizon=None):
    opt = OptimizationConfig(epochs=epochs, warmup=warmup, start_lr=2e-4, lr=1e-3, final_lr=1e-6, weight_decay=0.04,
                             final_weight_decay=0.4, ema=ema, ema_steps=ema_steps, total_steps=total_steps)
    return Schedules.from_config(opt, ipe, horizon or Horizon(total_steps or epochs * ipe))


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


def test_total_steps_is_the_runs_length_and_the_warmup_its_share():
    s = make(epochs=2, warmup=0.5, total_steps=40)
    assert s.horizon.total == 40 and s.warmup_steps == 10  # warmup 0.5 of 2 epochs: a quarter of the run
    assert s.lr_at(40) == pytest.approx(1e-6) and s.momentum_at(40) == 1.0


def test_a_shorter_plan_runs_every_schedule_to_its_end():
    # a plan of 400 of the 1000 configured steps from the start: the schedules see each step 2.5 positions apart
    s = make(horizon=Horizon(1000, [Replan(0, 400)]))
    assert s.lr_at(80) == pytest.approx(make().lr_at(200))  # the warm-up ends at the same share of the run
    assert s.lr_at(400) == pytest.approx(1e-6) and s.wd_at(400) == pytest.approx(0.4)
    assert s.momentum_at(400) == pytest.approx(1.0)


def target_movement(s):
    return sum(1.0 - s.momentum_at(t) for t in range(s.horizon.total))


def test_ema_steps_keeps_the_targets_total_movement_whatever_the_length():
    tuned = make(epochs=3, ema=(0.998, 1.0))  # 300 steps: the length the EMA was tuned for
    for total in (133, 468, 750):  # a short time limit, a fast machine's whole epoch, a long run
        moved = make(epochs=3, ema=(0.998, 1.0), ema_steps=300, total_steps=total)
        assert moved.momentum_at(0) == pytest.approx(1 - 0.002 * 300 / total)
        assert moved.momentum_at(total) == 1.0
        assert target_movement(moved) == pytest.approx(target_movement(tuned), rel=0.01)
        # without ema_steps the target moves in proportion to the length
        plain = make(epochs=3, ema=(0.998, 1.0), total_steps=total)
        assert target_movement(plain) == pytest.approx(target_movement(tuned) * total / 300, rel=0.01)
    # at the tuned length nothing changes, bit for bit; both ends move (a constant EMA keeps its movement too)
    moved = make(epochs=3, ema=(0.998, 1.0), ema_steps=300)
    assert [moved.momentum_at(t) for t in range(300)] == [tuned.momentum_at(t) for t in range(300)]
    const = make(epochs=3, ema=(0.99, 0.99), ema_steps=300, total_steps=600)
    assert const.momentum_at(0) == pytest.approx(0.995) and const.momentum_at(600) == pytest.approx(0.995)
    # a length far shorter than the tuned one cannot make the momentum negative
    assert make(epochs=3, ema=(0.9, 1.0), ema_steps=300, total_steps=10).momentum_at(0) == 0.0


def test_ema_steps_must_be_a_positive_step_count():
    with pytest.raises(ConfigError, match="optimization.ema_steps"):
        load_config(None, ["optimization.ema_steps=0"])
