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


# ------------------------------------------------------------------------------------------ backward_step

def _toy(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), torch.randn(16, 6)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_backward_step_with_a_disabled_scaler_is_the_plain_step_bit_for_bit(clip):
    m1, o1, x = _toy()
    m2, o2, _ = _toy()
    for _ in range(3):
        m1(x).pow(2).mean().backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(list(m1.parameters()), clip)
        o1.step()
        o1.zero_grad()
        P.backward_step(m2(x).pow(2).mean(), o2, P.Precision("fp32", "cpu").grad_scaler(), clip_grad=clip)
        o2.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_backward_step_fp16_takes_a_step_skips_an_inf_one_and_clips_in_true_units():
    model, opt, x = _toy()
    p = P.Precision("fp16", "cpu")
    scaler = p.grad_scaler()
    before = [t.detach().clone() for t in model.parameters()]
    with p.autocast():
        out = model(x)
    assert out.dtype == torch.float16
    scale0 = scaler.get_scale()
    P.backward_step(out.float().pow(2).mean() * float("inf"), opt, scaler)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped
    assert scaler.get_scale() == scale0 / 2
    opt.zero_grad()
    with p.autocast():
        loss = model(x).float().pow(2).mean()
    P.backward_step(loss, opt, scaler, clip_grad=1e-3)
    assert scaler.get_scale() == scale0 / 2  # taken: no back-off
    grads = torch.cat([t.grad.flatten() for t in model.parameters()])
    assert grads.norm() <= 1e-3 * 1.01  # unscaled before clipping: the clip is in the loss's own units
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------- the paths that resolve through it

def test_extraction_and_the_attentive_probe_run_fp16_through_the_policy(monkeypatch):
    from ijepa.eval import extract_features, train_attentive_probe
    from ijepa.models.vit import build_encoder
    _caps(monkeypatch, bf16=False, cuda=False)
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=4, img_size=16, in_chans=1).eval()
    images = torch.randint(0, 256, (6, 16, 16), dtype=torch.uint8)
    with pytest.warns(RuntimeWarning, match="fp16 was asked for"):
        f16 = extract_features(enc, images, dtype="fp16", progress=False)
    f32 = extract_features(enc, images, dtype="fp32", progress=False)
    assert f16.dtype == torch.float32 and not torch.equal(f16, f32)
    torch.testing.assert_close(f16, f32, atol=0.05, rtol=0.05)
    with pytest.raises(ConfigError, match="fp8"):
        extract_features(enc, images, dtype="fp8", progress=False)
    tokens, y = torch.randn(32, 4, 8), torch.arange(32) % 2
    res = train_attentive_probe(tokens, y, tokens, y, epochs=2, batch_size=8, dtype="fp16")
    assert res["precision"].startswith("fp16") and 0.0 <= res["accuracy"] <= 1.0


def test_the_benchmark_times_what_the_policy_runs_and_marks_an_emulated_dtype(monkeypatch):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parents[1] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("train_step_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _caps(monkeypatch, bf16=False, cuda=False)  # an AVX2-only CPU
    assert bench.resolve_dtypes(None, torch.device("cpu")) == {"fp32": False}
    with pytest.warns(RuntimeWarning, match="bf16 was asked for"):
        assert bench.resolve_dtypes("fp32,bf16", torch.device("cpu")) == {"fp32": False, "bf16": True}
    _caps(monkeypatch, bf16=True, cuda=False)  # Zen 4 / Sapphire Rapids
    assert bench.resolve_dtypes(None, torch.device("cpu")) == {"fp32": False, "bf16": False}
    assert "(emulated)" in bench._row_name({"variant": "", "dtype": "bf16", "emulated": True, "compile": False})


@pytest.mark.parametrize("isa, capped", [("AVX2", True), ("avx512_core", True), ("AVX512_CORE_BF16", False),
                                         ("AVX512_CORE_AMX", False), ("", False)])
def test_a_onednn_isa_cap_below_bf16_means_no_native_bf16(monkeypatch, isa, capped):
    # scripts/as-avx2.sh stands in for an AVX2-only CPU this way: the policy and the ladder must then pick fp32
    import ijepa.device as D

    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert D._onednn_isa_capped() is capped
    if capped:
        assert D.bf16_supported("cpu") is False


def _denormal_survives() -> bool:
    return (torch.tensor([1e-39]) * 1.0).item() != 0.0


def test_training_flushes_denormals_on_the_cpu_as_configured():
    # without the flush fp32 CPU steps slow down as training goes on (benchmarks/denormals.py)
    from ijepa.config import load_config
    from ijepa.train.loop import setup_device

    try:
        setup_device(load_config(None, ["meta.device=cpu"]))
        assert not _denormal_survives()
        setup_device(load_config(None, ["meta.device=cpu", "meta.flush_denormal=false"]))
        assert _denormal_survives()
    finally:
        torch.set_flush_denormal(False)  # torch's default, for the tests that follow


def test_fp16_pretraining_scales_the_loss_and_resumes_its_scaler(tmp_path):
    from conftest import cfg_with

    from ijepa.train.checkpoint import load_checkpoint
    from ijepa.train.loop import train

    cfg = cfg_with("meta.precision=fp16", "optimization.max_steps=3", "logging.online_knn=false")
    with pytest.warns(RuntimeWarning, match="fp16 was asked for"):  # a CPU has no native fp16 units
        summary = train(cfg, tmp_path)
    assert summary["precision"].startswith("fp16") and summary["steps"] == 3
    ckpt = load_checkpoint(tmp_path / "jepa-latest.pth.tar")
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in ckpt["encoder"].values())
