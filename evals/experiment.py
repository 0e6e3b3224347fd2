"""Run the paper's experiments: lists of train.py runs, shared between experiments, one or more at a time.

    python -m grokcopy.evals.experiment lr --preset tiny --out runs/experiments
    python -m grokcopy.evals.experiment all --jobs 2            # every experiment, two runs at once
    python -m grokcopy.evals.experiment intensity --preset paper-162m --nproc-per-node 8 --dry-run

An experiment is data: EXPERIMENTS[preset][name] is a list of (label, axis values). A run is named by
its axis values (lr0.003-bs4-wd0.1-do0) and lives once in OUT/runs/<run name>; OUT/NAME/<label> is a
symlink to it, so the baseline trains once although four experiments contain it, and
`python -m grokcopy.evals.report OUT/NAME/*` reads an experiment. Re-running a command resumes: a run with
final.json is skipped, one that another process is training is skipped (train.py locks its run
directory), and an unfinished one resumes from its latest checkpoint (train.py does that).
Every run's cosine floor follows its own LR: `--min-lr` is its LR times the preset's min_lr / lr (tiny:
1/100, paper-162m: 1/10), so the axis moves the whole schedule. `--max-steps N` shortens
every run, and the runs are then named <run name>-stepsN. `--extra "FLAGS"` adds train.py flags to
every run, before the axis values (which win); it is not part of a run's name, so a different
--extra wants a different --out. `--accum N` trains each run's batch as N micro-batches
(--batch-size batch/N --global-batch batch): the same recipe, and train.py then logs the gradient noise
scale B_simple at every eval (evals/noise_scale.py); those runs are named <run name>-accumN.
`--jobs N` runs N at once, each with OMP_NUM_THREADS = cores / N unless the environment sets it,
and its output in OUT/logs/<run name>.log.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from grokcopy.cli import UsageError, run_cli
from grokcopy.model import PRESETS
from grokcopy.model.config import TrainConfig
from grokcopy.model.run_dir import RunDir
from grokcopy.ownership import KIND_NAMES, output_kind

ROOT = Path(__file__).resolve().parents[1]

# The axes of each preset: the preset's own recipe in the middle, a factor of ~3 (LR) or 2 (batch)
# either side. All runs of one preset share the preset's schedule in steps.
AXES = {
    "tiny": {"lr": (3e-3, 1e-2, 3e-2), "batch_size": (4, 8, 16), "dropout": 0.1, "weight_decay": 0.1,
             "n_layers": (3, 6)},
    "paper-162m": {"lr": (2e-4, 6e-4, 1.8e-3), "batch_size": (16, 32, 64), "dropout": 0.1, "weight_decay": 0.1,
                   "n_layers": (12, 24)},
}


def experiments_for(axes: dict) -> dict[str, list[tuple[str, dict]]]:
    """name -> [(label, axis values)] for one preset's axes; every run sets all four axes."""
    base = {"lr": axes["lr"][1], "batch_size": axes["batch_size"][1], "weight_decay": axes["weight_decay"],
            "dropout": 0.0}
    return {
        "baseline": [("baseline", base)],
        "batch-size": [(f"bs{b}", {**base, "batch_size": b}) for b in axes["batch_size"]],
        "lr": [(f"lr{lr:g}", {**base, "lr": lr}) for lr in axes["lr"]],
        # weight decay is on in the baseline of both presets, so "none" turns it off
        "regularization": [
            ("none", {**base, "weight_decay": 0.0}),
            ("dropout", {**base, "weight_decay": 0.0, "dropout": axes["dropout"]}),
            ("weight-decay", base),
            ("both", {**base, "dropout": axes["dropout"]}),
        ],
        # shallow-to-deep needs several layers that can hold an induction head: tiny's 3 layers have one
        # (layer 0 stays diffuse under RoPE, layer 1 holds the previous-token head; docs/TINY.md)
        "depth": [(f"layers{n}", base if n == axes["n_layers"][0] else {**base, "n_layers": n})
                  for n in axes["n_layers"]],
        # learning intensity: LR x batch size, every pair
        "intensity": [(f"lr{lr:g}-bs{b}", {**base, "lr": lr, "batch_size": b})
                      for lr in axes["lr"] for b in axes["batch_size"]],
    }


EXPERIMENTS: dict[str, dict[str, list[tuple[str, dict]]]] = {p: experiments_for(a) for p, a in AXES.items()}


SHORT = {"lr": "lr", "batch_size": "bs", "weight_decay": "wd", "dropout": "do", "n_layers": "L", "seed": "seed"}


def run_name(overrides: dict) -> str:
    """{"lr": 0.003, "batch_size": 4, "weight_decay": 0.1, "dropout": 0.0} -> "lr0.003-bs4-wd0.1-do0"."""
    return "-".join(f"{SHORT.get(key, key.replace('_', '-'))}{value:g}" for key, value in overrides.items())


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


def accumulated(overrides: dict, preset: str, accum: int, ranks: int = 1) -> dict:
    """The overrides with each rank's batch trained as `accum` micro-batches of batch/accum sequences
    (train.py's --global-batch counts all ranks' sequences per step)."""
    if accum == 1:
        return overrides
    batch = overrides.get("batch_size", PRESETS[preset].train["batch_size"])
    if batch % accum:
        raise SystemExit(f"error: --accum {accum} does not divide the batch size {batch} of a run: "
                         "pick an --accum that divides every batch size on the axis")
    return {**overrides, "batch_size": batch // accum, "global_batch": batch * ranks}


def floor_ratio(preset: str) -> float:
    """The preset's cosine floor as a fraction of its LR: min_lr / lr where it fixes min_lr, else its
    min_lr_ratio (train.py's default where it sets neither)."""
    recipe = PRESETS[preset].train
    if recipe.get("min_lr") is not None:
        return recipe["min_lr"] / recipe["lr"]
    return recipe.get("min_lr_ratio", TrainConfig.min_lr_ratio)


def run_command(run_dir: Path, preset: str, overrides: dict, *, extra: list[str], max_steps: int | None,
                nproc: int, accum: int = 1) -> list[str]:
    """The train.py command line of one run (torchrun when nproc > 0, else this Python)."""
    launcher = (["torchrun", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 0 else [sys.executable])
    lr = overrides.get("lr", PRESETS[preset].train.get("lr", 1e-3))  # the floor follows each run's own LR
    cmd = [*launcher, str(ROOT / "train.py"), "--preset", preset, "--out", str(run_dir),
           "--min-lr", f"{floor_ratio(preset) * lr:g}",
           *extra, *flags(accumulated(overrides, preset, accum, max(nproc, 1)))]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    return cmd


def link(path: Path, target: Path) -> None:
    """Make `path` a relative symlink to the run directory `target` (which need not exist yet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    relative = Path(os.path.relpath(target, path.parent))
    if path.is_symlink() and Path(os.readlink(path)) == relative:
        return
    if path.exists() or path.is_symlink():
        raise SystemExit(f"{path} exists and is not a link to {target}: move it away or use another --out")
    path.symlink_to(relative, target_is_directory=True)


def run_all(commands: list[tuple[Path, list[str]]], jobs: int, log_dir: Path) -> int:
    """Run train.py commands, `jobs` at a time; after a failure start no new run. Returns 0 or an exit status."""
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
        log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, status = list(commands), [], 0
    while pending or running:
        while pending and len(running) < jobs and status == 0:
            run_dir, cmd = pending.pop(0)
            log = open(log_dir / f"{run_dir.name}.log", "a") if jobs > 1 else None
            running.append((run_dir, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log), log))
        if status != 0 and not running:
            break
        time.sleep(0.2)
        for entry in [r for r in running if r[1].poll() is not None]:
            running.remove(entry)
            run_dir, process, log = entry
            if log is not None:
                log.close()
            if process.returncode != 0:  # later runs would likely fail alike; a re-run resumes here
                print(f"run {run_dir} failed with exit status {process.returncode}", file=sys.stderr, flush=True)
                status = status or process.returncode
            else:
                print(f"done {run_dir}", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grokcopy.evals.experiment", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="one or more of: all, " + ", ".join(EXPERIMENTS["tiny"]))
    parser.add_argument("--preset", default="tiny", choices=sorted(EXPERIMENTS))
    parser.add_argument("--out", default="runs/experiments", help="runs go to OUT/runs, links to OUT/NAME/<label>")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--extra", default="", help="train.py flags for every run, one quoted string")
    parser.add_argument("--nproc-per-node", type=int, default=0, help="> 0: launch with torchrun")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--seeds", type=int, default=1, help="runs of each configuration, seeds 0..N-1 (default 1)")
    parser.add_argument("--accum", type=int, default=1,
                        help="train each batch as N micro-batches, which logs the gradient noise scale (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    grid = EXPERIMENTS[args.preset]
    names = list(grid) if "all" in args.names else args.names
    for name in names:
        if name not in grid:
            parser.error(f"unknown experiment {name!r}; choose from {['all', *grid]}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.accum < 1:
        parser.error(f"--accum must be >= 1, got {args.accum}")

    out = Path(args.out).resolve()  # absolute: train.py runs from the repo root
    # the grid root holds runs/ and links of its own: never inside a run, a corpus or an export
    owner = next(((p, kind) for p in (out, *out.parents) if (kind := output_kind(p))), None)
    if owner:
        raise UsageError(f"--out {args.out} is {'' if owner[0] == out else 'inside '}{KIND_NAMES[owner[1]]} "
                         f"({owner[0]}); an experiment writes its runs and links into a directory of its own")
    commands: dict[str, tuple[Path, list[str]]] = {}  # run name -> command, each run once
    # seed-major: a cut-short --seeds 3 has every configuration's seed 0 before any seed 1
    for seed in range(args.seeds):
        for name, (label, base) in ((n, entry) for n in names for entry in grid[n]):
            # seed 0 is the run as it always was; another seed is another run, named so
            overrides = base if seed == 0 else {**base, "seed": seed}
            label = label if seed == 0 else f"{label}-seed{seed}"
            # a shortened run is another run: a smoke test must not pass for the full one later
            suffix = ((f"-steps{args.max_steps}" if args.max_steps else "")
                      + (f"-accum{args.accum}" if args.accum > 1 else ""))
            run_dir = out / "runs" / (run_name(overrides) + suffix)
            if not args.dry_run:
                link(out / name / label, run_dir)
            commands[run_dir.name] = (run_dir, run_command(run_dir, args.preset, overrides,
                                                           extra=shlex.split(args.extra),
                                                           max_steps=args.max_steps, nproc=args.nproc_per_node,
                                                           accum=args.accum))
    todo = []
    for run_dir, cmd in commands.values():
        if RunDir(run_dir).final_path.is_file():
            print(f"skip {run_dir} (finished: final.json)", flush=True)
            continue
        if RunDir(run_dir).in_use():  # another runner (or a train.py by hand) is on it: leave it be
            print(f"skip {run_dir} (in use by another training process)", flush=True)
            continue
        print(shlex.join(cmd), flush=True)
        todo.append((run_dir, cmd))
    return 0 if args.dry_run else run_all(todo, args.jobs, out / "logs")


if __name__ == "__main__":
    sys.exit(run_cli(main))
