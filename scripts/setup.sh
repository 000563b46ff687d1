#!/usr/bin/env bash
# Set up a working copy: a virtual environment in .venv with ijepa installed editable (and the extras in
# IJEPA_EXTRAS, default: test),
# and Fashion-MNIST from Debian's package when it is missing. Safe to re-run; sourced by quickstart.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned to the build this machine kind mirrors: a looser pin would pull a multi-GB download.
python -m pip install -q "torch==${IJEPA_TORCH_VERSION:-2.14.1}" "torchvision==${IJEPA_TORCHVISION_VERSION:-0.29.1}"
# The extras to install: the test suite's by default; the quick start needs none (IJEPA_EXTRAS= installs the core only,
# a minute less on a fresh machine).
EXTRAS=${IJEPA_EXTRAS-test}
python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"

FMNIST=${IJEPA_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [ ! -e "$FMNIST/train-images-idx3-ubyte.gz" ] && [ ! -e "$FMNIST/train-images-idx3-ubyte" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "Fashion-MNIST is missing: install Debian's dataset-fashion-mnist, or set IJEPA_FASHION_MNIST to a" \
         "folder holding the four IDX files." >&2
    exit 1
  fi
fi
