"""`python -m grokcopy`: the command-line tools, one line each, so they can be found without the README.

Prints the list and exits 0 (with or without --help). Imports nothing heavy (no torch), so it answers
at once; each tool listed takes --help itself.
"""

from __future__ import annotations

import argparse
import sys

from grokcopy import __version__

# (the command, what it does). `python -m` modules come first, as a test checks each one exists
# and has a main(); train.py, scripts/ and bench/ live in a source checkout, not in the installed package.
ENTRY_POINTS: list[tuple[str, str]] = [
    ("python -m grokcopy.data.prepare", "tokenise text, JSON lines or parquet into checksummed token shards"),
    ("python -m grokcopy.model.sample", "see what a run's model writes; --copy-demo shows it copy"),
    ("python -m grokcopy.model.hf export", "write a run as a Hugging Face Llama (or SmolLM3) directory"),
    ("python -m grokcopy.evals.inspect", "summarise a run directory, while it trains or after"),
    ("python -m grokcopy.evals.experiment", "train an experiment's grid of runs (--dry-run prints the commands)"),
    ("python -m grokcopy.evals.report", "figures and report.md (onsets, onset laws) over run directories"),
    ("python -m bench.train_matrix", "train steps for every backend combination, eager and compiled (checkout)"),
    ("python -m bench.static_sm90", "every kernel config compiled for sm_90a: registers, spills (no GPU)"),
    ("python -m bench.step_model", "a roofline account of one training step: the tokens/s and MFU its op counts imply"),
    ("python -m bench.determinism_cost", "what --deterministic costs the compiled CPU step (paired blocks)"),
    ("python -m bench.gpu_check", "everything that needs a GPU, in one run (scripts/gpu_check.sh wraps it)"),
    ("torchrun --standalone --nproc-per-node=1 train.py", "train (python train.py: one process); --help lists "
                                                           "every flag (checkout)"),
    ("bash scripts/train_default.sh", "set up, then train the default `tiny` run on the CPU (checkout)"),
    ("bash scripts/test.sh", "set up, then ruff and the CPU test suite, as CI runs it (checkout)"),
    ("pytest bench/", "benchmarks: data and train step on the CPU, kernels vs peers on CUDA"),
]

LIBRARY = """In Python:
  from grokcopy import kernels        rms_norm, fused_add_rms_norm, swiglu, flash_attention(_with_stats)
  from grokcopy.model import Llama, LlamaConfig, PRESETS, from_hf
  from grokcopy.data import open_corpus, WindowSampler

Documentation: README.md and docs/ in the repository."""


def listing() -> str:
    width = max(len(command) for command, _ in ENTRY_POINTS)
    lines = [f"  {command:<{width}}  {what}" for command, what in ENTRY_POINTS]
    return "Entry points (each takes --help):\n" + "\n".join(lines) + "\n\n" + LIBRARY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grokcopy", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"grokcopy {__version__}: a small Llama trainer with Triton kernels, built to watch copying "
                    "(induction heads) emerge.",
        epilog=listing())
    parser.add_argument("--version", action="version", version=f"grokcopy {__version__}")
    parser.parse_args(argv)
    parser.print_help()  # no command of its own: the list is the answer
    return 0


if __name__ == "__main__":
    sys.exit(main())
