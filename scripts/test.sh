#!/usr/bin/env bash
# Set up and run the whole test suite (slow tests included; `-m "not slow"` for a quicker look).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python -m pytest -q "$@"
