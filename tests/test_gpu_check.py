"""scripts/gpu_check.sh cannot run in CI (no GPU), so CI checks what it can: every step's command
line, parsed by the parser that step would use (--dry-run), and the summary of real GPU results."""

import shutil
import subprocess
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_summary import write_summary

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "bench" / "results" / "h100-80gb-hbm3-2026-11-25"


@pytest.mark.slow
def test_dry_run_checks_every_step(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("tests", "bench-kernels", "bench-attention", "corpus", "train-matrix", "bench-train", "run"):
        log = (tmp_path / "logs" / f"{step}.log").read_text()
        assert log.startswith("$ "), step
        assert f"{step:<16} ok" in proc.stdout


def test_dry_run_fails_on_a_bad_command_line(tmp_path, monkeypatch, capsys):
    """A flag train.py does not know makes the dry run fail: the check is not a formality."""
    real_plan = gpu_check.plan

    def broken_plan(*args, **kwargs):
        steps = real_plan(*args, **kwargs)
        next(s for s in steps if s.name == "run").cmd.append("--no-such-flag")
        return steps

    monkeypatch.setattr(gpu_check, "plan", broken_plan)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--steps", "run"]) == 1
    assert "unrecognized arguments: --no-such-flag" in (tmp_path / "logs" / "run.log").read_text()


def test_unknown_step_is_an_error(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--steps", "nope"]) == 2
    assert "error: --steps nope: unknown step" in capsys.readouterr().err


def test_summary_of_the_h100_results(tmp_path):
    results = tmp_path / "h100"
    shutil.copytree(H100, results)
    text = write_summary(results).read_text()
    assert "NVIDIA H100 80GB HBM3" in text and "580.159.04" in text and "triton: 3.6.0" in text
    assert "| sdpa-triton-triton | 302,426 |" in text  # a row of the train matrix, as measured
    assert "T4096-D128-causal | fwd |" in text
    assert text == (H100 / "summary.md").read_text()  # the committed summary is this code's output


def test_summary_skips_the_empty_file_of_a_timed_out_benchmark(tmp_path):
    """A benchmark step stopped by its time limit leaves an empty JSON (H200, 2026-11-26): the summary
    still names the machine and tabulates what the other steps measured."""
    results = tmp_path / "r"
    shutil.copytree(H100 / "call1", results)
    (results / "attention.json").write_text("")
    text = write_summary(results).read_text()
    assert "NVIDIA H100 80GB HBM3" in text and "## Attention" not in text
    assert "## RMSNorm and SwiGLU" in text  # call1's kernels.json, still tabulated


# ---------------------------------------------------------------------------------------------
# --budget: the short slot (issue 33). A GPU must confirm the wall time; here the arithmetic of the
# shares, the order, the per-case files and the dry run are checked.


def test_budget_steps_run_in_order_and_fit_the_budget_even_when_each_uses_all_its_time(tmp_path, monkeypatch):
    clock = [1000.0]
    ran = []

    def fake_run_step(step, out, dry_run, kill_grace_s=120):
        ran.append((step.name, step.timeout_s, list(step.cmd)))
        clock[0] += step.timeout_s + kill_grace_s  # the step runs to its limit, then takes its whole grace
        return {"step": step.name, "status": "timed out", "wall_s": step.timeout_s + kill_grace_s,
                "limit_s": step.timeout_s}

    monkeypatch.setattr(gpu_check, "run_step", fake_run_step)
    monkeypatch.setattr(gpu_check.time, "time", lambda: clock[0])
    monkeypatch.setattr(gpu_check, "environment", lambda: {})
    monkeypatch.setenv("GPU_CHECK_STARTED", "1000")
    assert gpu_check.main(["--budget", "420", "--out", str(tmp_path), "--data", str(tmp_path / "none")]) == 0
    assert [name for name, _, _ in ran] == ["train-matrix", "bench-kernels", "bench-attention", "tests"]
    assert clock[0] - 1000 <= 420 - gpu_check.RESERVE_S
    limits = dict((name, limit) for name, limit, _ in ran)
    assert limits["train-matrix"] == int(405 * 0.45) - 5  # its share of the budget less the reserve, less grace
    matrix = ran[0][2]
    assert matrix[matrix.index("--combos") + 1:][:4] == gpu_check.HEADLINE
    assert "--data" in matrix and matrix[matrix.index("--data") + 1] == "random"  # no corpus prepared there
    assert f"--budget-s={limits['train-matrix'] - 20}" in matrix
    assert all("bench.case_log" in cmd for name, _, cmd in ran if name != "train-matrix")


def test_allot_hands_unused_time_to_the_steps_after():
    names = list(gpu_check.SHARES)
    assert gpu_check.allot(405, "train-matrix", names) == 182
    assert gpu_check.allot(405 - 182, "bench-kernels", names[1:]) == 81
    assert gpu_check.allot(405 - 20, "bench-kernels", names[1:]) == 140  # the matrix finished early


@pytest.mark.slow
def test_budget_dry_run_checks_the_four_steps(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--budget", "420", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == list(gpu_check.SHARES)
    assert "auto-auto-auto+compile" in (tmp_path / "logs" / "train-matrix.log").read_text()


def test_case_log_keeps_every_finished_case_when_the_run_is_killed(tmp_path):
    """pytest-benchmark writes its JSON at the end; bench/case_log.py writes each case as it ends, so a
    run killed in its third case keeps the first two."""
    import json
    import sys
    import time

    (tmp_path / "test_cases.py").write_text(
        "import time\n"
        "def test_bench(benchmark):\n"
        "    benchmark.pedantic(lambda: sum(range(100)), rounds=3)\n"
        "    benchmark.extra_info['gbps'] = 1.5\n"
        "def test_plain():\n"
        "    assert True\n"
        "def test_hangs():\n"
        "    time.sleep(600)\n")
    log, benchmarks = tmp_path / "cases.jsonl", tmp_path / "bench.json"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", str(tmp_path / "test_cases.py"), "-q", "-p",
                             "no:cacheprovider", "-p", "bench.case_log", f"--case-log={log}",
                             f"--case-benchmarks={benchmarks}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    cases = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["nodeid"].split("::")[1], c["outcome"]) for c in cases] == [("test_bench", "passed"),
                                                                          ("test_plain", "passed")]
    (bench,) = json.loads(benchmarks.read_text())["benchmarks"]
    assert bench["name"] == "test_bench" and bench["extra_info"] == {"gbps": 1.5} and bench["stats"]["rounds"] == 3


def test_summary_of_a_tests_step_cut_by_its_limit(tmp_path):
    import json

    (tmp_path / "steps.json").write_text(json.dumps({"steps": {"tests": {
        "step": "tests", "status": "timed out", "wall_s": 80.0, "limit_s": 75}}}))
    (tmp_path / "tests-cases.jsonl").write_text("\n".join(json.dumps(c) for c in [
        {"nodeid": "tests/test_a.py::test_one", "when": "call", "outcome": "passed", "seconds": 1.0},
        {"nodeid": "tests/test_a.py::test_two", "when": "call", "outcome": "failed", "seconds": 2.0,
         "error": ["AssertionError"]}]) + "\n")
    text = write_summary(tmp_path).read_text()
    assert "| . | tests | timed out | 80 | 75 |" in text
    assert "2 tests finished before the step ended, 1 passed, 1 failed, 0 skipped, 3 s." in text
    assert "- FAILED tests/test_a.py::test_two" in text


def test_train_matrix_names_any_combination_and_keeps_to_its_budget(tmp_path, capsys):
    import json

    import torch

    from bench import train_matrix

    assert train_matrix.parse_combo("auto-auto-auto+compile") == ("auto", "auto", "auto", True)
    with pytest.raises(ValueError, match="'cudnn' is none of"):
        train_matrix.parse_combo("cudnn-torch-torch")
    assert train_matrix.main(["--data", "random", "--combos", "sdpa-nope-torch", "--dry-run"]) == 2
    # a budget too small for any case: each is recorded as skipped, in order, and the JSON is written
    out = tmp_path / "m.json"
    assert train_matrix.main(["--preset", "tiny", "--data", "random", "--steps", "4", "--warmup", "1",
                              "--budget-s", "5", "--combos", "torch-torch-torch", "auto-auto-auto",
                              f"--json={out}"]) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["combo"], r["error"][:8]) for r in results] == [("torch-torch-torch", "skipped:"),
                                                               ("auto-auto-auto", "skipped:")]
    # a case whose share is spent stops after warm-up + 3 timed steps; compile/autotune time is apart
    batches = [torch.randint(0, 1024, (2, 65)) for _ in range(20)]
    r = train_matrix.run_combo(("torch", "torch", "torch", False), "tiny", batches, 2, torch.device("cpu"), 0.0)
    assert r["steps_run"] == 5 and len(r["losses"]) == 5
    assert r["compile_and_autotune_s"] == pytest.approx(r["first_step_s"] - r["median_step_s"])
