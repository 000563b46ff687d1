#!/usr/bin/env bash
# The main job on a fresh machine: set up, pretrain the CPU default on Fashion-MNIST, then print the
# fmnist-probe accuracy of the pretrained encoder beside a random-init encoder and raw pixels.
# Extra arguments go to `ijepa train` (e.g. optimization.epochs=1 for a shorter look).
set -euo pipefail
cd "$(dirname "$0")/.."
IJEPA_EXTRAS=${IJEPA_EXTRAS-} source scripts/setup.sh   # the core install: the quick start needs no extras
RUN=${IJEPA_RUN:-runs/quickstart}
ijepa train --out "$RUN" "$@"   # no --config: the CPU default's rung for this machine (printed)
ijepa eval "$RUN" --protocol fmnist-probe --baselines random,pixels
