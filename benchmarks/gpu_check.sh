#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): at most 8 minutes on one H100/H200, no downloads.
#   bash benchmarks/gpu_check.sh --out /tmp/gpu_check      # then read /tmp/gpu_check/gpu_check.json
#   bash benchmarks/gpu_check.sh --smoke --out /tmp/gc      # the CPU version of the same code (seconds)
# PYTHON picks the interpreter (default: the repository's .venv if there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
