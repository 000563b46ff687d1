"""The CPU default's ladder: which shipped Fashion-MNIST recipe `ijepa train` runs when no ``--config`` is given.

One recipe cannot serve every machine: the default recipe's ViT-base width trains at ~100 images/s on 2 cores that
run bf16 natively and at 14-20 images/s on 2 AVX2-only cores, where bf16 is emulated and fp32 is all there is.
Each rung is a shipped config measured on its class of machine (docs/cpu-recipe.md; the measurements are in
docs/experiments/2026-12-cpu-ladder.md). This module
is the ladder's data (torch-free: ``ijepa train --help`` prints it); ``recipes.py`` plans which rung runs. Native
bf16 does not make a machine fast: a rung with ``min_fit`` steps down to the next one when its time limit, at the
step time measured on a quiet machine, would fit less than that share of its epoch.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Rung:
    config: str   # a shipped config name (configs/NAME.yaml)
    needs: str    # which machines it is for
    gives: str    # what it is (docs/cpu-recipe.md has what it gave on its class of machine)
    # The share of its configured steps the rung's time limit must fit, at the step time measured before training,
    # to be run: below it the next rung gives more in the same minutes (docs/experiments/2026-12-cpu-ladder.md).
    min_fit: float | None = None


LADDER = (
    Rung("fmnist_cpu", "native bf16: CPUs with AVX512-BF16 or AMX (AMD Zen 4 and later, Intel Xeon Sapphire "
         "Rapids and later) and GPUs",
         "ViT-base width at depth 2, 36 px, one epoch within a 10.5-minute time limit, bf16; where the limit fits "
         "under 80% of its epoch on a quiet machine (a slow one), the next rung runs instead", min_fit=0.8),
    Rung("fmnist_cpu_fp32", "CPUs without native bf16 (AVX2-only: AMD Zen 3 and older, Intel client CPUs, most "
         "laptops), where bf16 is emulated",
         "ViT-base width at depth 2 on 7-px patches, 28 px, one epoch within a 9.5-minute time limit, fp32"),
)


def describe_ladder(width: int = 116) -> str:
    """The ladder as text for ``ijepa train --help``, wrapped to ``width``."""
    return "\n".join(textwrap.fill(f"{r.config}: for {r.needs}. {r.gives}.", width, initial_indent="  ",
                                    subsequent_indent="    ") for r in LADDER)
