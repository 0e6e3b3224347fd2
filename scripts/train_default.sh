#!/usr/bin/env bash
# The README's first command: installs grokcopy, then trains the embedded default (`tiny` on the
# Python standard library's own sources, prepared on first run) on this machine's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py="${PYTHON:-python3}"
exec "$py" -m torch.distributed.run --standalone --nproc-per-node=1 train.py "$@"
