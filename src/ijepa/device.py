"""Device facts shared by training and evaluation: which device to use, and whether bf16 pays there."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is worth using on ``device``: CUDA with native bf16, or a CPU with AMX or
    AVX512-BF16 instructions (without them CPU bf16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # get_cpu_capability() only names the widest vector ISA ("AVX512" even on a CPU with avx512_bf16), so
    # prefer torch's own instruction probes, which exist since 2.1.
    names = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    probes = [getattr(torch.cpu, name, None) for name in names]
    probes = [p for p in probes if p is not None]
    if probes:
        try:
            return any(bool(p()) for p in probes)
        except RuntimeError:
            pass
    cap = torch.backends.cpu.get_cpu_capability().upper()
    return "AMX" in cap or "BF16" in cap
