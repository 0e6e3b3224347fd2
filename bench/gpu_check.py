"""One command that makes an hour on a GPU count: `bash scripts/gpu_check.sh` runs this.

    python -m bench.gpu_check                         # every step, into bench/results/<gpu>-<date>/
    python -m bench.gpu_check --steps tests train-matrix --out DIR
    python -m bench.gpu_check --dry-run               # on any machine: every step's command line checked

Steps, in order (each in its own process, under its own time limit, its output in logs/<step>.log):

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


def plan(out: Path, data: Path, run_minutes: float, bench_filter: str, matrix_compile: str,
         matrix_combos: list[str] | None = None, test_filter: str = "") -> list[Step]:
    py = sys.executable
    k = ["-k", bench_filter] if bench_filter else []
    run_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "grokcopy-gpu-check-run"
    return [
        Step("tests", [py, "-m", "pytest", *NATIVE_TESTS, *(["-k", test_filter] if test_filter else []),
                       "-v", "-rfE", "-p", "no:cacheprovider",
                       f"--junitxml={out / 'tests.xml'}"], 900, {"GROKCOPY_AUTOTUNE": "0"}),
        Step("bench-kernels", [py, "-m", "pytest", "bench/test_kernels.py", "-q", *k,
                               f"--benchmark-json={out / 'kernels.json'}"], 600),
        Step("bench-attention", [py, "-m", "pytest", "bench/test_attention.py", "-q", *k,
                                 f"--benchmark-json={out / 'attention.json'}"], 900),
        Step("corpus", [py, "-m", "grokcopy.data.prepare", "--default", "--vocab-size", "32000", "--out", str(data),
                        "--quiet"], 300),
        Step("train-matrix", [py, "-m", "bench.train_matrix", "--preset", "paper-162m", "--data", str(data),
                              "--steps", "50", "--compile", matrix_compile,
                              *(["--combos", *matrix_combos] if matrix_combos else []),
                              f"--json={out / 'train_matrix.json'}"], 1200),
        Step("bench-train", [py, "-m", "pytest", "bench/test_train.py", "-q",
                             f"--benchmark-json={out / 'train.json'}"], 600),
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


def run_step(step: Step, out: Path, dry_run: bool) -> dict:
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
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                rc = proc.wait()
    wall = time.time() - t0
    ok = rc == 0 and (not timed_out or step.signal_stop)
    status = "ok" if ok else ("timed out" if timed_out else f"failed (exit {rc})")
    print(f"{step.name:<16} {status:<18} {wall:7.1f} s   {log_path}", flush=True)
    return {"step": step.name, "status": status, "wall_s": wall, "rc": rc, "timed_out": timed_out,
            "command": " ".join(cmd)}


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
    parser.add_argument("--dry-run", action="store_true", help="check every step's command line; run nothing")
    args = parser.parse_args(argv)

    out = args.out or default_out()
    (out / "logs").mkdir(parents=True, exist_ok=True)
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
    for step in chosen:
        results[step.name] = run_step(step, out, args.dry_run)
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
