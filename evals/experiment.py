"""Run one of the paper's experiments: a list of train.py runs, one after another.

    python -m evals.experiment lr --preset tiny --out runs/experiments
    python -m evals.experiment intensity --preset paper-162m --nproc-per-node 8 --dry-run

An experiment is data: EXPERIMENTS[preset][name] is a list of (run name, train.py flag overrides).
Run r goes to OUT/NAME/r. Re-running the same command resumes: a run with final.json is skipped
and an unfinished one resumes from its latest checkpoint (train.py does that for a run directory).
`--extra "FLAGS"` adds train.py flags to every run (before the overrides, so the overrides win);
`--max-steps N` shortens every run (for smoke tests; the schedules in the grid stay in steps).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The axes of each preset: the preset's own recipe in the middle, a factor of ~3 (LR) or 2 (batch)
# either side. All runs of one preset share the preset's schedule in steps.
AXES = {
    "tiny": {"lr": (1e-3, 3e-3, 1e-2), "batch_size": (2, 4, 8), "dropout": 0.1, "weight_decay": 0.1},
    "paper-162m": {"lr": (2e-4, 6e-4, 1.8e-3), "batch_size": (16, 32, 64), "dropout": 0.1, "weight_decay": 0.1},
}


def experiments_for(axes: dict) -> dict[str, list[tuple[str, dict]]]:
    """name -> [(run name, flag overrides)] for one preset's axes."""
    return {
        "baseline": [("baseline", {})],
        "batch-size": [(f"bs{b}", {"batch_size": b}) for b in axes["batch_size"]],
        # min_lr -1: the cosine floor follows lr (a tenth of it) instead of the preset's fixed value
        "lr": [(f"lr{lr:g}", {"lr": lr, "min_lr": -1.0}) for lr in axes["lr"]],
        # weight decay is on by default in both presets, so "none" turns it off
        "regularization": [
            ("none", {"weight_decay": 0.0, "dropout": 0.0}),
            ("dropout", {"weight_decay": 0.0, "dropout": axes["dropout"]}),
            ("weight-decay", {"weight_decay": axes["weight_decay"], "dropout": 0.0}),
            ("both", {"weight_decay": axes["weight_decay"], "dropout": axes["dropout"]}),
        ],
        # learning intensity: LR x batch size, every pair
        "intensity": [(f"lr{lr:g}-bs{b}", {"lr": lr, "batch_size": b, "min_lr": -1.0})
                      for lr in axes["lr"] for b in axes["batch_size"]],
    }


EXPERIMENTS: dict[str, dict[str, list[tuple[str, dict]]]] = {p: experiments_for(a) for p, a in AXES.items()}


def flags(overrides: dict) -> list[str]:
    """{"batch_size": 4, "compile": True} -> ["--batch-size", "4", "--compile"]."""
    out = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out


def run_command(run_dir: Path, preset: str, overrides: dict, *, extra: list[str], max_steps: int | None,
                nproc: int) -> list[str]:
    """The train.py command line of one run (torchrun when nproc > 0, else this Python)."""
    launcher = (["torchrun", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 0 else [sys.executable])
    cmd = [*launcher, str(ROOT / "train.py"), "--preset", preset, "--out", str(run_dir), *extra, *flags(overrides)]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.experiment", description=__doc__.split("\n")[0])
    parser.add_argument("name", help="one of: " + ", ".join(EXPERIMENTS["tiny"]))
    parser.add_argument("--preset", default="tiny", choices=sorted(EXPERIMENTS))
    parser.add_argument("--out", default="runs/experiments", help="runs go to OUT/NAME/<run>")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--extra", default="", help="train.py flags for every run, one quoted string")
    parser.add_argument("--nproc-per-node", type=int, default=0, help="> 0: launch with torchrun")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    grid = EXPERIMENTS[args.preset]
    if args.name not in grid:
        parser.error(f"unknown experiment {args.name!r}; choose from {list(grid)}")

    for run, overrides in grid[args.name]:
        run_dir = Path(args.out).resolve() / args.name / run  # absolute: train.py runs from the repo root
        cmd = run_command(run_dir, args.preset, overrides, extra=shlex.split(args.extra),
                          max_steps=args.max_steps, nproc=args.nproc_per_node)
        if (run_dir / "final.json").is_file():
            print(f"skip {run_dir} (finished: final.json)", flush=True)
            continue
        print(shlex.join(cmd), flush=True)
        if args.dry_run:
            continue
        result = subprocess.run(cmd, cwd=ROOT)
        if result.returncode != 0:  # stop: later runs would likely fail alike, and a re-run resumes here
            print(f"run {run_dir} failed with exit status {result.returncode}", file=sys.stderr)
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
