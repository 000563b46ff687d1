"""The CPU default's ladder: which shipped Fashion-MNIST recipe `ijepa train` runs when no ``--config`` is given.

One recipe cannot serve every machine: the default recipe's ViT-base width trains at ~100 images/s on 2 cores that
run bf16 natively and at 14-20 images/s on 2 AVX2-only cores, where bf16 is emulated and fp32 is all there is.
Each rung is a shipped config validated in docs/cpu-recipe.md ("the ladder") on its class of machine; the first
rung whose requirement the machine meets is chosen, and the choice and its reason are printed. Native bf16 does not
make a machine fast: a rung with ``min_fit`` steps down to the next one when its time cap, at the step time the run
measures at start-up, would cut its epoch short by more than it allows.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Rung:
    config: str   # a shipped config name (configs/NAME.yaml)
    needs: str    # which machines it is for
    gives: str    # what it was measured to give there (docs/cpu-recipe.md)
    # The share of its configured steps the rung's time cap must fit, at the step time measured at start-up, to
    # be run: below it the next rung gives more in the same minutes (docs/cpu-recipe.md, "Stepping down").
    min_fit: float | None = None


LADDER = (
    Rung("fmnist_cpu", "native bf16: CPUs with AVX512-BF16 or AMX (AMD Zen 4 and later, Intel Xeon Sapphire "
         "Rapids and later) and GPUs",
         "ViT-base width at depth 2, 36 px, one epoch capped at 9 minutes, bf16: the quick start printed 84.61% in "
         "10.4 minutes on 2 AMX cores (84.38% in 13.9 on Zen 4 before the cap); where the cap fits under 80% of "
         "its epoch (a slow machine), the next rung runs instead", min_fit=0.8),
    Rung("fmnist_cpu_fp32", "CPUs without native bf16 (AVX2-only: AMD Zen 3 and older, Intel client CPUs, most "
         "laptops), where bf16 is emulated",
         "ViT-base width at depth 2 on 7-px patches, 28 px, one epoch capped at 9.5 minutes, fp32: the quick "
         "start printed 83.61% in 14.2 minutes on 2 Zen 3 cores (83.7% on an AVX2 stand-in)"),
)


def choose_rung(device: str = "auto", measure: bool = True) -> tuple[Rung, str]:
    """The rung for this machine and the reason, in words (where it decides against bf16 and ``measure``, with
    the matmul throughput measured on the spot: a fraction of a second)."""
    # torch only here: the ladder's data above is what `ijepa train --help` prints, and --help stays torch-free
    import torch

    from .device import bf16_supported, resolve_device
    from .precision import matmul_gflops

    dev = resolve_device(str(device))
    native = bf16_supported(dev)
    rung = LADDER[0] if native else LADDER[1]
    what = f"this {dev.type} {'runs' if native else 'has no native units for'} bf16"
    if measure and dev.type == "cpu" and not native:  # the reason, in numbers, where it decides against bf16
        fp32, bf16 = matmul_gflops(torch.float32, dev, budget_s=0.1), matmul_gflops(torch.bfloat16, dev, budget_s=0.1)
        what += f" (matmul measured: bf16 {bf16:.1f} GFLOP/s, fp32 {fp32:.1f} GFLOP/s)"
    return rung, what


def rungs_from(rung: Rung) -> tuple[Rung, ...]:
    """``rung`` and the rungs below it, in the order the CPU default tries them."""
    return LADDER[LADDER.index(rung):]


def describe_ladder(width: int = 116) -> str:
    """The ladder as text for ``ijepa train --help``, wrapped to ``width``."""
    return "\n".join(textwrap.fill(f"{r.config}: for {r.needs}. {r.gives}.", width, initial_indent="  ",
                                    subsequent_indent="    ") for r in LADDER)
