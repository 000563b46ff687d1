"""The precision policy: its choice for each kind of hardware (capabilities mocked), the one-time warning for an
emulated dtype, and fp16's gradient scaler on the CPU."""

import warnings

import pytest
import torch

import ijepa.precision as P
from ijepa.errors import ConfigError


def _caps(monkeypatch, bf16: bool, cuda: bool):
    monkeypatch.setattr(P, "bf16_supported", lambda device: bf16)
    monkeypatch.setattr(P, "_native_fp16", lambda device: cuda and torch.device(device).type == "cuda")
    monkeypatch.setattr(P, "matmul_gflops", lambda dtype, device="cpu", **kw: 0.3 if dtype != torch.float32 else 113.0)
    monkeypatch.setattr(P, "_warned", set())


@pytest.mark.parametrize("device, bf16, cuda, expected", [
    ("cuda", True, True, "bf16"),    # A100 / H100
    ("cuda", False, True, "fp16"),   # T4 / V100 / P100: fp16 with a scaler
    ("cpu", True, False, "bf16"),    # Zen 4, Sapphire Rapids
    ("cpu", False, False, "fp32"),   # AVX2-only: Zen 3, most laptops
    ("mps", False, False, "fp32"),
])
def test_auto_picks_by_hardware(monkeypatch, device, bf16, cuda, expected):
    _caps(monkeypatch, bf16, cuda)
    p = P.resolve_precision("auto", device)
    assert p.name == expected
    assert p.needs_scaler == (expected == "fp16")
    assert p.reason.startswith("auto")


def test_explicit_bf16_where_emulated_is_honoured_and_warns_once_with_the_measured_reason(monkeypatch):
    _caps(monkeypatch, bf16=False, cuda=False)
    with pytest.warns(RuntimeWarning, match=r"bf16 matmul 0\.3 GFLOP/s against fp32 113\.0"):
        p = P.resolve_precision("bf16", "cpu")
    assert p.name == "bf16" and "emulated" in p.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.resolve_precision("bf16", "cpu")  # the second time: no warning


def test_explicit_choices_where_native_do_not_warn(monkeypatch):
    _caps(monkeypatch, bf16=True, cuda=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("bf16", "cpu").name == "bf16"
        assert P.resolve_precision("fp16", "cuda").name == "fp16"
        assert P.resolve_precision("fp32", "cuda").name == "fp32"


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="fp8"):
        P.resolve_precision("fp8", "cpu")


def test_fp32_autocast_is_a_no_op_and_bf16_autocast_casts():
    x = torch.randn(4, 4)
    with P.Precision("fp32", "cpu").autocast():
        assert (x @ x).dtype == torch.float32
    with P.Precision("bf16", "cpu").autocast():
        assert (x @ x).dtype == torch.bfloat16


def test_fp16_scaler_skips_a_step_with_inf_gradients_and_backs_off():
    torch.manual_seed(0)
    p = P.Precision("fp16", "cpu")
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = p.grad_scaler()
    assert scaler.is_enabled()
    scale0 = scaler.get_scale()
    before = [t.detach().clone() for t in model.parameters()]
    loss = model(torch.randn(8, 4)).sum() * float("inf")  # an overflowing step
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the step was skipped
    assert scaler.get_scale() == scale0 * 0.5
    opt.zero_grad()
    with p.autocast():
        loss = model(torch.randn(8, 4)).float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a finite step is taken


def test_bf16_and_fp32_need_no_scaler():
    for name in ("bf16", "fp32"):
        assert not P.Precision(name, "cpu").grad_scaler().is_enabled()
