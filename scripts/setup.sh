#!/usr/bin/env bash
# Installs grokcopy and what it needs into the current Python environment.
# Usage: bash scripts/setup.sh [EXTRAS]   e.g. bash scripts/setup.sh dev,hf
# torch goes first and explicitly: a bare `pip install torch` (or a package that asks for it)
# would pull the multi-GB CUDA build onto a machine that has no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
if ! "$py" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        "$py" -m pip install -q torch
    else
        "$py" -m pip install -q torch==2.13.0
    fi
fi
if [ -n "$extras" ]; then
    "$py" -m pip install -q -e ".[$extras]"
else
    "$py" -m pip install -q -e .
fi
