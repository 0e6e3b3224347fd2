"""One command that makes a short slot on a GPU count: `bash scripts/gpu_check.sh` runs this.

    python -m bench.gpu_check --budget 420            # the short check: 4 steps within 7 minutes
    python -m bench.gpu_check                         # every step, into bench/results/<gpu>-<date>/
    python -m bench.gpu_check --steps tests train-matrix --out DIR
    python -m bench.gpu_check --dry-run [--budget 420]  # on any machine: every step's command line checked

`--budget S` runs, in this order, the steps a short slot is for, and gives each a share of S seconds
(SHARES) of what is left when it starts, so time a step leaves unused goes to the ones after it:
    train-matrix     the headline (HEADLINE): SDPA + compile against auto (+ compile), all Triton
                     eager and all Triton + compile, 50 steps at most, each case within its share
                     of the step's time (random tokens unless --data holds the prepared corpus)
    bench-kernels    RMSNorm / SwiGLU at paper-162m's shapes (65536 rows)
    bench-attention  T 1024, D 64, causal: paper-162m's attention, and its stats overhead
    tests            a representative native subset (BUDGET_TESTS), GROKCOPY_AUTOTUNE=0
Every case is on disk when it ends (bench/case_log.py for the pytest steps; the train matrix
rewrites its JSON after each case), so a step stopped by its time limit loses only the case in
flight. Compilation and autotuning happen in each case's first step or warm-up, timed apart (the
matrix's first_step_s, do_bench's warm-up) and never in the reported medians.

Without --budget, every step below runs, each under its own time limit, its output in logs/<step>.log:

    tests            the kernel and model tests compiled natively on CUDA (GROKCOPY_AUTOTUNE=0: one
                     launch config per kernel, so the suite compiles in minutes instead of tuning)
    bench-kernels    pytest bench/test_kernels.py: RMSNorm / SwiGLU against eager, torch.compile, Liger
    bench-attention  pytest bench/test_attention.py: attention against SDPA flash / cuDNN / efficient,
                     the stats variant against the plain forward
    corpus           the standard-library corpus with a 32k BPE (skipped when --data already holds it)
    train-matrix     paper-162m train steps for every backend combination, eager and compiled
                     (python -m bench.train_matrix): tokens/s, MFU, peak memory, loss against torch
    bench-train      pytest bench/test_train.py: the train step against eager+SDPA and torch.compile
    run              a --run-minutes paper-162m run of train.py with the CUDA defaults on the corpus,
                     stopped by SIGTERM (which checkpoints): loss curve, copy metrics, tokens/s

Then `summary.md` names the device, driver, torch and triton versions and tabulates what each step
measured. A step that fails or runs out of time is recorded as such and the next one still runs.

--dry-run runs nothing on a GPU: each pytest step is collected (`--collect-only`), and every other
step's command line is parsed by the very parser the step would use. CI runs it (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NATIVE_TESTS = ["tests/test_mixed_precision.py", "tests/test_model.py", "tests/test_rms_norm.py",
                "tests/test_swiglu.py", "tests/test_flash_attention.py", "tests/test_attention_stats.py"]
# --budget: the steps in order, each one's share of the time left when it starts
SHARES = {"train-matrix": 0.45, "bench-kernels": 0.2, "bench-attention": 0.15, "tests": 0.2}
HEADLINE = ["sdpa-torch-torch+compile", "auto-auto-auto+compile", "triton-triton-triton",
            "triton-triton-triton+compile"]
BUDGET_KERNELS = "65536"  # paper-162m's rows: 32 x 1024 tokens, rounded to the benchmark's shape
BUDGET_ATTENTION = "T1024-D64-causal"
# compile through Inductor first (issue 33's check), attention, the model in bf16, then the norm and
# SwiGLU sweeps (about 200 parameter cases, the first a short slot drops; bench-kernels has timed
# those kernels by then)
BUDGET_TESTS = ["tests/test_compile.py", "tests/test_flash_attention.py", "tests/test_attention_stats.py",
                "tests/test_mixed_precision.py", "tests/test_model.py", "tests/test_rms_norm.py",
                "tests/test_swiglu.py"]
RESERVE_S = 15  # kept back from the budget: starting Python, the summary, a stopped step's exit
# parse_args of a module, run on the step's own arguments: what --dry-run uses for non-pytest steps
PARSE_ONLY = {
    "train.py": "import sys, train; train.parse_args(sys.argv[1:])",
    "data.prepare": "import sys, grokcopy.data.prepare as m; m.build_parser().parse_args(sys.argv[1:])",
}


@dataclass
class Step:
    name: str
    cmd: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    signal_stop: bool = False  # the time limit is the plan (SIGTERM, then the step's own clean exit)


def case_log(out: Path, name: str, benchmarks: bool = True) -> list[str]:
    """pytest flags that put every finished case on disk at once (bench/case_log.py)."""
    flags = ["-p", "bench.case_log", f"--case-log={out / f'{name}-cases.jsonl'}"]
    return [*flags, f"--case-benchmarks={out / f'{name}.json'}"] if benchmarks else flags


def budget_plan(out: Path, data: Path, test_filter: str = "") -> list[Step]:
    """The short check's four steps, in order; their time limits are set as each starts (allot)."""
    py = sys.executable
    matrix_data = str(data) if (data / "meta.json").is_file() else "random"
    return [
        Step("train-matrix", [py, "-m", "bench.train_matrix", "--preset", "paper-162m", "--data", matrix_data,
                              "--steps", "50", "--combos", *HEADLINE, f"--json={out / 'train_matrix.json'}"], 0),
        Step("bench-kernels", [py, "-m", "pytest", "bench/test_kernels.py", "-q", "-k", BUDGET_KERNELS,
                               "-p", "no:cacheprovider", *case_log(out, "kernels")], 0),
        Step("bench-attention", [py, "-m", "pytest", "bench/test_attention.py", "-q", "-k", BUDGET_ATTENTION,
                                 "-p", "no:cacheprovider", *case_log(out, "attention")], 0),
        Step("tests", [py, "-m", "pytest", *BUDGET_TESTS, *(["-k", test_filter] if test_filter else []), "-q",
                       "-rfE", "-p", "no:cacheprovider", *case_log(out, "tests", benchmarks=False),
                       f"--junitxml={out / 'tests.xml'}"], 0, {"GROKCOPY_AUTOTUNE": "0"}),
    ]


def allot(left_s: float, step: str, steps_left: list[str]) -> int:
    """Seconds for `step` out of `left_s`: its share among the steps not yet run (itself included)."""
    return max(1, int(left_s * SHARES[step] / sum(SHARES[s] for s in steps_left)))


def plan(out: Path, data: Path, run_minutes: float, bench_filter: str, matrix_compile: str,
         matrix_combos: list[str] | None = None, test_filter: str = "") -> list[Step]:
    py = sys.executable
    k = ["-k", bench_filter] if bench_filter else []
    run_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "grokcopy-gpu-check-run"
    return [
        Step("tests", [py, "-m", "pytest", *NATIVE_TESTS, *(["-k", test_filter] if test_filter else []),
                       "-v", "-rfE", "-p", "no:cacheprovider", *case_log(out, "tests", benchmarks=False),
                       f"--junitxml={out / 'tests.xml'}"], 900, {"GROKCOPY_AUTOTUNE": "0"}),
        Step("bench-kernels", [py, "-m", "pytest", "bench/test_kernels.py", "-q", *k, *case_log(out, "kernels")],
             600),
        Step("bench-attention", [py, "-m", "pytest", "bench/test_attention.py", "-q", *k,
                                 *case_log(out, "attention")], 900),
        Step("corpus", [py, "-m", "grokcopy.data.prepare", "--default", "--vocab-size", "32000", "--out", str(data),
                        "--quiet"], 300),
        Step("train-matrix", [py, "-m", "bench.train_matrix", "--preset", "paper-162m", "--data", str(data),
                              "--steps", "50", "--compile", matrix_compile,
                              *(["--combos", *matrix_combos] if matrix_combos else []),
                              f"--json={out / 'train_matrix.json'}"], 1200),
        Step("bench-train", [py, "-m", "pytest", "bench/test_train.py", "-q", *case_log(out, "train")], 600),
        # plain `python train.py` (rank 0 of 1): SIGTERM reaches the trainer itself, which checkpoints
        # and exits 0, where torchrun's agent would die of the signal with a traceback
        Step("run", [py, "train.py", "--preset", "paper-162m",
                     "--data", str(data), "--out", str(run_dir), "--max-steps", "100000", "--warmup-steps", "200",
                     "--eval-every", "100", "--train-stats-every", "50", "--ckpt-every", "0", "--quiet",
                     "--no-tensorboard"], int(run_minutes * 60), signal_stop=True),
    ]


def dry_run_command(step: Step) -> list[str]:
    """The command that checks `step`'s command line without doing its work."""
    cmd = step.cmd
    if cmd[1:3] == ["-m", "pytest"]:
        return [*cmd, "--collect-only"]
    if "train.py" in cmd:
        script = cmd.index("train.py")
        return [sys.executable, "-c", PARSE_ONLY["train.py"], *cmd[script + 1 :]]
    if cmd[1:3] == ["-m", "grokcopy.data.prepare"]:
        return [sys.executable, "-c", PARSE_ONLY["data.prepare"], *cmd[3:]]
    return [*cmd, "--dry-run"]


def run_step(step: Step, out: Path, dry_run: bool, kill_grace_s: int = 120) -> dict:
    log_path = out / "logs" / f"{step.name}.log"
    cmd = dry_run_command(step) if dry_run else step.cmd
    env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1"}
    if dry_run:
        env.pop("GROKCOPY_AUTOTUNE", None)
    t0 = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=step.timeout_s if not dry_run else 600)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, 15)  # SIGTERM: train.py checkpoints and exits; pytest stops
            try:
                rc = proc.wait(timeout=kill_grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                rc = proc.wait()
    wall = time.time() - t0
    ok = rc == 0 and (not timed_out or step.signal_stop)
    status = "ok" if ok else ("timed out" if timed_out else f"failed (exit {rc})")
    print(f"{step.name:<16} {status:<18} {wall:7.1f} s   {log_path}", flush=True)
    return {"step": step.name, "status": status, "wall_s": wall, "rc": rc, "timed_out": timed_out,
            "limit_s": step.timeout_s, "command": " ".join(cmd)}


def environment() -> dict:
    """Device, driver and library versions, read off this machine."""
    env = {"python": platform.python_version(), "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M")}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_runtime"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env.update(device=p.name, sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                       capability=f"{p.major}.{p.minor}")
    except ImportError:
        pass
    for name in ("triton", "liger_kernel", "flash_attn", "zstandard", "numpy"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "installed")
        except ImportError:
            env[name] = "not installed"
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                            "--format=csv,noheader"], capture_output=True, text=True)
        env["nvidia_smi"] = q.stdout.strip()
        m = re.search(r", ([0-9.]+), ", q.stdout)
        env["driver"] = m.group(1) if m else "unknown"
    return env


def default_out() -> Path:
    try:
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        name = "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return REPO / "bench" / "results" / f"{slug}-{time.strftime('%Y-%m-%d')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/<gpu>-<date>)")
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "grokcopy" / "stdlib-bpe32000",
                        help="the 32k-BPE standard-library corpus (prepared there by the corpus step)")
    parser.add_argument("--steps", nargs="+", help="run only these steps (default: all, in order)")
    parser.add_argument("--run-minutes", type=float, default=10.0, help="length of the paper-162m run")
    parser.add_argument("--bench-filter", default="", help="pytest -k expression for the kernel benchmarks")
    parser.add_argument("--matrix-compile", choices=["no", "yes", "both"], default="both",
                        help="train-matrix: eager, compiled or both")
    parser.add_argument("--matrix-combos", nargs="+", help="train-matrix: only these combinations")
    parser.add_argument("--test-filter", default="", help="pytest -k expression for the native tests")
    parser.add_argument("--max-step-seconds", type=int, default=0,
                        help="cap every step's time limit (for a lease shorter than the whole check)")
    parser.add_argument("--budget", type=float, default=0,
                        help="seconds for the whole check: the short slot's four steps, each given its share")
    parser.add_argument("--dry-run", action="store_true", help="check every step's command line; run nothing")
    args = parser.parse_args(argv)

    # scripts/gpu_check.sh notes when it started: installing the wheels counts against the budget too
    started = float(os.environ.get("GPU_CHECK_STARTED", time.time()))
    out = args.out or default_out()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if args.budget:
        steps = budget_plan(out, args.data, args.test_filter)
    else:
        steps = plan(out, args.data, args.run_minutes, args.bench_filter, args.matrix_compile, args.matrix_combos,
                     args.test_filter)
    if args.max_step_seconds:
        for step in steps:
            step.timeout_s = min(step.timeout_s, args.max_step_seconds)
    names = [s.name for s in steps]
    for name in args.steps or []:
        if name not in names:
            print(f"error: --steps {name}: unknown step; choose from {names}", file=sys.stderr)
            return 2
    chosen = [s for s in steps if not args.steps or s.name in args.steps]
    if not args.dry_run and "corpus" in [s.name for s in chosen] and (args.data / "meta.json").is_file():
        chosen = [s for s in chosen if s.name != "corpus"]
        print(f"corpus           already prepared at {args.data}")
    status_path = out / "steps.json"
    previous = json.loads(status_path.read_text()) if status_path.is_file() else {}
    results = previous.get("steps", {})
    if not args.dry_run:
        results["environment"] = environment()
    for i, step in enumerate(chosen):
        grace = 120
        if args.budget:  # this step's share of what is left; a stopped step gets 5 s to exit
            left = started + args.budget - RESERVE_S - time.time()
            grace = 5
            step.timeout_s = max(1, allot(left, step.name, [s.name for s in chosen[i:]]) - grace)
            if step.name == "train-matrix":  # its cases share the step's time (minus its start-up)
                step.cmd.append(f"--budget-s={max(1, step.timeout_s - 20)}")
        results[step.name] = run_step(step, out, args.dry_run, grace)
        if step.name == "run" and not args.dry_run:
            collect_run(Path(step.cmd[step.cmd.index("--out") + 1]), out)
        status_path.write_text(json.dumps({"steps": results}, indent=1) + "\n")
    if args.dry_run:
        failed = [r["step"] for r in results.values() if isinstance(r, dict) and r.get("status", "ok") != "ok"]
        return 1 if failed else 0
    from bench.gpu_summary import write_summary

    write_summary(out)
    print(f"summary: {out / 'summary.md'}")
    return 0


def collect_run(run_dir: Path, out: Path) -> None:
    """Keep the run's small files (metrics, config, curves) in the results; its checkpoint stays behind."""
    from grokcopy.model.run_dir import RunDir

    run = RunDir(run_dir)
    for path in (run.metrics_path, run.config_path, run.final_path):
        if path.is_file():
            shutil.copy(path, out / f"run-{path.name}")
    try:
        from grokcopy.evals.curves import plot_curves

        records = run.read_metrics()[0]
        if any("copy_gain" in r for r in records):
            plot_curves(records, out / "run-curves.png", title="paper-162m, stdlib BPE-32k")
    except Exception as e:  # the figure is a convenience; the metrics are already kept
        print(f"(no run figure: {e})")


if __name__ == "__main__":
    sys.exit(main())
