"""Device facts shared by training and evaluation: which device to use, and whether bf16 pays there."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) under which its bf16 matmuls fall back
# to emulation even where the CPU has the instructions: scripts/as-avx2.sh sets AVX2 to stand in for an AVX2-only
# CPU, and a user may set one to work around a kernel bug.
_NO_BF16_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


def _onednn_isa_capped() -> bool:
    import os

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return isa.strip().upper() in _NO_BF16_ISAS


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is worth using on ``device``: CUDA with native bf16, or a CPU with AMX or
    AVX512-BF16 instructions (without them CPU bf16 is emulated and slower than fp32), unless oneDNN is capped below
    them (ONEDNN_MAX_CPU_ISA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if _onednn_isa_capped():
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


def flush_denormals(on: bool = True) -> None:
    """Flush denormal floats to zero on the CPU (FTZ/DAZ, in torch's worker threads too). Without it fp32
    training slows down as it goes on, as denormals appear in activations and gradients (benchmarks/denormals.py,
    docs/performance.md). Values below 1.2e-38 become 0, far below anything training resolves."""
    torch.set_flush_denormal(on)

