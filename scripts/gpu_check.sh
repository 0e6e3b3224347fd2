#!/usr/bin/env bash
# One command that makes an hour on a GPU count (see bench/gpu_check.py for the steps):
#   bash scripts/gpu_check.sh --budget 420       # the short slot: train matrix, kernels, attention, tests in 7 min
#   bash scripts/gpu_check.sh                    # everything, into bench/results/<gpu>-<date>/ (~20 min, one H100)
#   bash scripts/gpu_check.sh --steps tests train-matrix
#   bash scripts/gpu_check.sh --dry-run          # any machine: checks every step's command line
#
# The GPU image this project is lent (torch 2.11, triton 3.6) has no network and lacks zstandard and
# liger-kernel. Fetch their wheels beforehand on a machine that has a network:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl zstandard liger-kernel
# and this script installs whatever .whl/ holds into /tmp/grokcopy-site before it starts.
# (flash-attn has no wheel on PyPI for that torch; its benchmark cases skip.)
set -euo pipefail
export GPU_CHECK_STARTED="${GPU_CHECK_STARTED:-$(date +%s)}"  # --budget counts from here
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/grokcopy-site .whl/*.whl \
        || echo "warning: the wheels in .whl/ do not install on this Python; going on without them" >&2
    export PYTHONPATH="/tmp/grokcopy-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# the repository itself is importable without `pip install -e .` (which needs a network for its build)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m bench.gpu_check "$@"
