#!/usr/bin/env bash
# Run a command as an AVX2-only CPU (AMD Zen 3, Intel client CPUs) would: torch's vector kernels, MKL and oneDNN
# are all capped at AVX2, so fp32 runs AVX2 code and bf16 matmuls fall back to emulation (about 0.3 GFLOP/s, as
# measured on a real Zen 3), and ijepa's precision policy and CPU ladder see a CPU without native bf16.
# A stand-in for timing on a machine with AVX-512 or AMX, not a copy of a Zen 3: the clock, caches and memory stay
# this machine's, so scale its times by the ratios measured on the same work (docs/experiments/2026-12-cpu-ladder.md).
#   bash scripts/as-avx2.sh bash scripts/quickstart.sh
set -euo pipefail
export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
exec "$@"
