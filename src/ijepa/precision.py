"""The precision policy: which dtype the heavy matmuls run in, on this device, and why.

``auto`` picks bf16 where the hardware runs it natively (CUDA GPUs of compute capability 8.0 and later; CPUs with
AVX512-BF16 or AMX), fp16 with a gradient scaler on CUDA GPUs without bf16 (T4, V100, P100), fp32 everywhere else.
Asking for bf16 or fp16 where it would be emulated is honoured (the user asked) but warned about once, with the
matmul throughput measured on the spot: on an AVX2-only CPU bf16 runs several hundred times slower than fp32.
Training, extraction, the probes, fine-tuning, the decoders and the benchmarks all resolve their precision here.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from .config import PRECISIONS
from .device import bf16_supported
from .errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_warned: set[tuple[str, str]] = set()

__all__ = ["PRECISIONS", "Precision", "backward_step", "matmul_gflops", "resolve_precision"]


@dataclass(frozen=True)
class Precision:
    """A resolved choice: ``name`` in bf16 / fp16 / fp32, the device type it is for, and the reason."""

    name: str
    device_type: str
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        return self.name != "fp32"

    @property
    def needs_scaler(self) -> bool:
        """fp16's narrow exponent underflows small gradients: the loss is scaled (a GradScaler) whenever fp16
        is used for training. bf16 has fp32's exponent range and needs none."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to this dtype (a no-op context for fp32)."""
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is enabled only for fp16 (disabled it passes losses and steps straight through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})" if self.reason else self.name


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
                  clip_grad: float | None = None, params: list[torch.Tensor] | None = None) -> None:
    """Backward, optional gradient-norm clipping, optimizer step, through ``scaler`` (a :meth:`Precision.grad_scaler`).

    fp16: the loss is scaled before backward, the gradients unscaled before clipping (so ``clip_grad`` is in true
    units), and a step whose gradients hold inf/NaN is skipped (the scale backs off; ``scaler.get_scale()`` tells,
    at the cost of a host sync, so nothing here asks). With a disabled scaler (bf16, fp32) every call is the plain
    ``backward(); clip; step()``, bit for bit. The profiler sees the two halves as "backward" and "optimizer"."""
    with record_function("backward"):
        scaler.scale(loss).backward()
    with record_function("optimizer"):
        if clip_grad:
            scaler.unscale_(optimizer)
            if params is None:
                params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)  # a disabled scaler calls optimizer.step() and nothing else
        scaler.update()


def matmul_gflops(dtype: torch.dtype, device: torch.device | str = "cpu", n: int = 256, budget_s: float = 0.2) -> float:
    """Throughput of an n x n matmul in ``dtype`` on ``device``, measured for about ``budget_s`` seconds (at least
    one product, so an emulated dtype costs about a second at most at n = 256)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s:
            return 2 * n**3 * reps / elapsed / 1e9


def _native_fp16(device: torch.device) -> bool:
    # CUDA GPUs run fp16 tensor-core matmuls from compute capability 7.0 (V100); T4 (7.5) and P100 (6.0) have fast
    # fp16 arithmetic too. CPUs run fp16 natively only with AVX512-FP16 / AMX-FP16, which autocast rarely reaches.
    return device.type == "cuda" and torch.cuda.is_available()


def _warn_emulated(name: str, device: torch.device) -> None:
    key = (name, device.type)
    if key in _warned:
        return
    _warned.add(key)
    try:
        fast, slow = matmul_gflops(torch.float32, device), matmul_gflops(_DTYPES[name], device)
        measured = f"measured here: {name} matmul {slow:.1f} GFLOP/s against fp32 {fast:.1f} GFLOP/s"
    except Exception as e:  # a device that cannot run the dtype at all
        measured = f"a {name} matmul failed here ({type(e).__name__})"
    warnings.warn(f"{name} was asked for, but this {device.type} has no native {name} units, so it is emulated "
                  f"({measured}); meta.precision=auto (or fp32) would run faster", RuntimeWarning, stacklevel=3)


def resolve_precision(requested: str = "auto", device: torch.device | str = "cpu") -> Precision:
    """Turn ``auto | bf16 | fp16 | fp32`` into the :class:`Precision` this ``device`` will run."""
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    native_bf16 = bf16_supported(device)
    if requested == "auto":
        if native_bf16:
            return Precision("bf16", device.type, "auto: native bf16 on this " + device.type)
        if _native_fp16(device):
            return Precision("fp16", device.type, "auto: this GPU has no bf16; fp16 with a gradient scaler")
        return Precision("fp32", device.type, f"auto: no native bf16 on this {device.type}")
    if requested == "bf16" and not native_bf16:
        _warn_emulated("bf16", device)
        return Precision("bf16", device.type, "asked for; emulated here")
    if requested == "fp16" and not _native_fp16(device):
        _warn_emulated("fp16", device)
        return Precision("fp16", device.type, "asked for; emulated here")
    return Precision(requested, device.type, "asked for")
