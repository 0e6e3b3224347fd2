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
