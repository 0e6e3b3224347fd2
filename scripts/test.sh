#!/usr/bin/env bash
# The README's test command: installs grokcopy with its dev, hf, tb, lens and wandb extras, then runs the
# CPU test suite (Triton kernels under TRITON_INTERPRET=1, set by tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,hf,tb,lens,wandb
py="${PYTHON:-python3}"
"$py" -m ruff check .
# pytest exits 5 when it collects nothing; `set -e` turns that (and any failure) into a red run.
"$py" -m pytest tests/ "$@"
