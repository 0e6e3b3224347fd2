"""Fault injection on everything grokcopy writes into a run directory: damaged, truncated and
half-written checkpoints, metrics.jsonl, copy_cases.npz, final.json and config.json; a full disk
during a write; kill -9 in the middle of a checkpoint write; resumes that would silently change the
run; HF exports over an older export. The bar: no silent or wrong outcome, one `error:` line (no
traceback) for a user's mistake, and nothing lost that a checkpoint had."""

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_train import ROOT, SMALL, env

import train
from grokcopy.cli import run_cli
from grokcopy.evals.inspect import inspect_run
from grokcopy.evals.inspect import main as inspect_main
from grokcopy.model import load_checkpoint
from grokcopy.model.run_dir import CHECKSUMS, CheckpointError, RunDir, sidecar_path

BASE = [*SMALL, "--eval-every", "0", "--ckpt-every", "2", "--keep-ckpts", "3", "--no-tensorboard"]


def train_cli(argv, capsys) -> tuple[int, str, str]:
    code = run_cli(train.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def run6(corpus, tmp_path, capsys):
    """A run with checkpoints at steps 2, 4 and 6."""
    out = tmp_path / "run"
    code, _, err = train_cli([*BASE, "--data", str(corpus), "--max-steps", "6", "--out", str(out)], capsys)
    assert code == 0, err
    run = RunDir(out)
    assert [c.step for c in run.checkpoints()] == [2, 4, 6]
    return run, [*BASE, "--data", str(corpus), "--out", str(out)]


def flip_bit(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


DAMAGE = {
    "bit-flip-early": lambda p: flip_bit(p, 100),
    "bit-flip-middle": lambda p: flip_bit(p, p.stat().st_size // 2),
    "bit-flip-last-byte": lambda p: flip_bit(p, p.stat().st_size - 1),
    "empty": lambda p: truncate(p, 0),
    "truncated-10-bytes": lambda p: truncate(p, 10),
    "truncated-half": lambda p: truncate(p, p.stat().st_size // 2),
    "one-byte-short": lambda p: truncate(p, p.stat().st_size - 1),
    "garbage": lambda p: p.write_bytes(b"not a checkpoint\n" * 100),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_is_named_and_the_previous_one_resumes(run6, capsys, damage):
    run, args = run6
    DAMAGE[damage](run.checkpoint_path(6))
    code, out, err = train_cli([*args, "--max-steps", "8"], capsys)
    assert code == 0, err
    assert "step-00000006.pt" in out and "Using step-00000004.pt instead" in out
    assert "resuming" in out and "from step 4" in out
    steps = [r["step"] for r in run.read_metrics()[0]]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # steps 5, 6 logged again, not twice


def test_a_damaged_checkpoint_is_never_loaded_silently(run6):
    run, _ = run6
    flip_bit(run.checkpoint_path(4), run.checkpoint_path(4).stat().st_size // 2)
    with pytest.raises(CheckpointError, match="step-00000004.pt: checksum mismatch"):
        load_checkpoint(run.checkpoint_path(4))
    assert load_checkpoint(run.path)[1].d_model == 32  # the run directory: its newest good one (6)
    report = inspect_run(run.path)
    assert [c["step"] for c in report["checkpoints"] if c["problem"]] == [4] and report["resumable"]


def test_every_checkpoint_damaged_is_one_error_line(run6, capsys):
    run, args = run6
    for c in run.checkpoints():
        truncate(c.path, 50)
    code, out, err = train_cli([*args, "--max-steps", "8"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --out ")
    assert "no loadable checkpoint" in err and "step-00000006.pt" in err and "Traceback" not in err


def test_a_checkpoint_without_any_checksum_is_not_trusted(run6, capsys):
    """Neither its own checksum nor a SHA256SUMS line: it is named and skipped, never loaded unverified."""
    run, args = run6
    sidecar_path(run.checkpoint_path(6)).unlink()
    sums = run.checkpoints_dir / CHECKSUMS
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if "step-00000006" not in line))
    code, out, err = train_cli([*args, "--max-steps", "8"], capsys)
    assert code == 0 and "step-00000006.pt: carries no checksum" in out and "from step 4" in out


def test_deleting_sha256sums_does_not_switch_verification_off(run6, capsys):
    """The issue's example: with SHA256SUMS gone, a damaged checkpoint is still named and skipped by
    every reader (train, sample's and export's load_checkpoint, inspect)."""
    run, args = run6
    (run.checkpoints_dir / CHECKSUMS).unlink()
    flip_bit(run.checkpoint_path(6), run.checkpoint_path(6).stat().st_size // 2)
    with pytest.raises(CheckpointError, match="step-00000006.pt: checksum mismatch"):
        load_checkpoint(run.checkpoint_path(6))
    assert [c["step"] for c in inspect_run(run.path)["checkpoints"] if c["problem"]] == [6]
    code, out, err = train_cli([*args, "--max-steps", "8"], capsys)
    assert code == 0 and "step-00000006.pt: checksum mismatch" in out and "from step 4" in out


def test_a_checkpoint_from_before_the_sidecars_loads_when_sha256sums_verifies_it(run6, capsys):
    """Backward compatibility: checkpoints written before each carried its checksum are verified
    against SHA256SUMS; a damaged one is skipped, and with SHA256SUMS gone too none loads unverified."""
    run, args = run6
    for c in run.checkpoints():
        sidecar_path(c.path).unlink()
    flip_bit(run.checkpoint_path(6), 100)
    assert load_checkpoint(run.checkpoint_path(4))[1].d_model == 32
    code, out, err = train_cli([*args, "--max-steps", "8"], capsys)
    assert code == 0 and f"checksum mismatch with {CHECKSUMS}" in out and "from step 4" in out
    for c in run.checkpoints():  # the resume wrote steps 6 and 8 with their own checksums; 4 has none
        sidecar_path(c.path).unlink(missing_ok=True)
    (run.checkpoints_dir / CHECKSUMS).unlink()
    code, out, err = train_cli([*args, "--max-steps", "10"], capsys)
    assert code == 2 and "carries no checksum" in err and "sha256sum" in err


def test_kill9_during_a_checkpoint_write_resumes_from_the_previous_one(corpus, tmp_path):
    """The process dies with half of step 4's checkpoint in its temp file: the temp file is removed by
    the next trainer, nothing half-written is ever loaded, and the run goes on from step 2."""
    out = tmp_path / "run"
    killer = (
        "import os, signal, sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import train\n"
        "from grokcopy.model import run_dir\n"
        "real = run_dir.torch.save\n"
        "def save(state, f):\n"
        "    if state['step'] == 4:\n"
        "        f.write(b'x' * 1000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(state, f)\n"
        "run_dir.torch.save = save\n"
        "sys.exit(train.main(sys.argv[1:]))\n")
    args = [*BASE, "--data", str(corpus), "--out", str(out), "--max-steps", "6"]
    killed = subprocess.run([sys.executable, "-c", killer, *args], cwd=ROOT, env=env(), capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list((out / "checkpoints").glob(".step-00000004.pt.*.tmp"))  # the half-written temp file
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "from step 2" in resumed.stdout, resumed.stderr
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert [c.step for c in RunDir(out).checkpoints()] == [2, 4, 6]


class FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes, as a full disk's do."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def test_disk_full_during_a_checkpoint_is_one_error_line_and_keeps_the_last_one(corpus, tmp_path, capsys,
                                                                              monkeypatch):
    """The disk fills while step 4's checkpoint is written: torch.save sees the OS error as its own
    RuntimeError ("unexpected pos"); the error line names the file, the disk and that it is full."""
    out = tmp_path / "run"
    from grokcopy.data import atomic

    real_fdopen = atomic.os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FullDisk(f, 1000) if ".step-00000004.pt." in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)
    code, out_text, err = train_cli([*BASE, "--data", str(corpus), "--out", str(out), "--max-steps", "6"], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert f"error: {out / 'checkpoints' / 'step-00000004.pt'}: No space left on device (the disk is full: " in err
    assert "the file system mounted at " in err and "unexpected pos" not in err
    run = RunDir(out)
    assert [c.step for c in run.checkpoints()] == [2] and not list(run.checkpoints_dir.glob(".*.tmp"))
    run.verify(run.checkpoint_path(2))


def test_metrics_rewrite_is_atomic(run6, monkeypatch):
    """A failure while resume rewrites metrics.jsonl (a kill, a full disk) leaves the old file whole."""
    run, _ = run6
    before = run.metrics_path.read_text()

    def failing_write(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("grokcopy.model.run_dir.write_atomically", failing_write)
    with pytest.raises(OSError):
        run.truncate_metrics(2)
    assert run.metrics_path.read_text() == before


def test_a_damaged_metrics_line_is_kept_and_reported(run6, capsys):
    run, args = run6
    lines = run.metrics_path.read_text().splitlines()
    lines[1] = '{"step": 2, "loss": nonsense'
    run.metrics_path.write_text("\n".join(lines) + "\n")
    report = inspect_run(run.path)
    assert report["progress"]["damaged_lines"] == [2] and not report["progress"]["last_line_cut"]
    code, _, err = train_cli([*args, "--max-steps", "8"], capsys)
    assert code == 0, err
    assert '{"step": 2, "loss": nonsense' in run.metrics_path.read_text()  # the user's line is not dropped


def test_damaged_copy_cases_are_made_again_the_same(run6, capsys):
    run, args = run6
    with np.load(run.copy_cases_path) as f:
        cases = f["copy"].copy()
    truncate(run.copy_cases_path, 100)
    code, out, err = train_cli([*args, "--max-steps", "8"], capsys)
    assert code == 0 and "copy_cases.npz cannot be read" in out
    with np.load(run.copy_cases_path) as f:
        assert np.array_equal(f["copy"], cases)


@pytest.mark.parametrize("name", ["final.json", "config.json"])
def test_inspect_on_a_damaged_json_is_one_error_line(run6, capsys, name):
    run, _ = run6
    (run.path / "final.json").write_text('{"step": 6}\n')
    (run.path / name).write_text('{"step": 6, "param')
    assert inspect_main([str(run.path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run.path / name} is not valid JSON") and err.count("\n") == 1


def test_resume_with_another_recipe_is_refused_naming_each_field(run6, capsys):
    run, args = run6
    code, _, err = train_cli([*args, "--max-steps", "8", "--lr", "1e-3", "--batch-size", "2"], capsys)
    assert code == 2 and "--lr 0.003 -> 0.001" in err and "--batch-size 4 -> 2" in err and "--change-recipe" in err
    assert json.loads(run.config_path.read_text())["batch_size"] == 4  # nothing was rewritten
    code, _, err = train_cli([*args, "--max-steps", "8", "--batch-size", "2", "--change-recipe"], capsys)
    assert code == 0, err
    config = json.loads(run.config_path.read_text())
    assert config["recipe_changes"] == [{"step": 6, "changes": {"batch_size": [4, 2]}}]
    tokens = {r["step"]: r["tokens"] for r in run.read_metrics()[0]}
    assert tokens[8] - tokens[6] == 2 * (2 * 64)  # two steps of the new batch, on top of the old total


def test_max_steps_below_the_reached_step_is_said(run6, capsys):
    _, args = run6
    code, _, err = train_cli([*args, "--max-steps", "4"], capsys)
    assert code == 2 and "--max-steps 4 is below the step the run has reached (6)" in err


@pytest.mark.parametrize("toml, message", [
    ("max_steps = 20.5", "max_steps = 20.5 is not an int"),
    ('quiet = "no"', "quiet = 'no' is not a bool"),
    ('lr = "fast"', "lr = 'fast' is not a float"),
    ("batch_size = true", "batch_size = True is not an int"),
])
def test_config_file_values_are_type_checked(tmp_path, capsys, toml, message):
    (tmp_path / "c.toml").write_text(toml + "\n")
    code, _, err = train_cli(["--config", str(tmp_path / "c.toml")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_out_that_is_a_file_is_one_error_line(corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("mine\n")
    code, _, err = train_cli([*BASE, "--data", str(corpus), "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "is a file, not a directory" in err and (tmp_path / "file").read_text() == "mine\n"


def test_stale_temp_files_are_removed_when_a_trainer_takes_the_run(run6):
    """Only temp files of names grokcopy writes (mkstemp's .NAME.XXXXXXXX.tmp) are deleted; a user's
    files that merely look like temp files stay."""
    run, _ = run6
    ckpts = run.checkpoints_dir
    stale = [ckpts / ".step-00000008.pt.abc12_3x.tmp", run.path / ".metrics.jsonl.k2j4h5g6.tmp",
             ckpts / ".step-00000008.pt.sha256.a1b2c3d4.tmp", ckpts / "step-00000008.pt.sha256"]
    mine = [run.path / ".notes.tmp", run.path / ".draft.md.abcdefgh.tmp", run.checkpoints_dir / ".x.tmp",
            run.path / ".metrics.jsonl.tmp", run.checkpoints_dir / ".step-00000008.pt.my-copy.tmp"]
    for path in stale + mine:
        path.write_bytes(b"x")
    run.lock()
    run.unlock()
    assert not any(p.exists() for p in stale) and [c.step for c in run.checkpoints()] == [2, 4, 6]
    assert all(p.read_bytes() == b"x" for p in mine)


def test_hf_export_never_merges_into_an_older_export(run6, tmp_path, capsys):
    pytest.importorskip("transformers", reason="needs the hf extra: pip install -e '.[hf]'")
    from grokcopy.model.hf import main as hf_main

    run, _ = run6
    target = tmp_path / "hf"
    assert run_cli(hf_main, ["export", str(run.path), str(target)]) == 0
    (target / "tokenizer.json").write_text("{}")  # stands in for a stale file of the earlier export
    assert run_cli(hf_main, ["export", str(run.path), str(target)]) == 2
    assert "earlier export" in capsys.readouterr().err and (target / "tokenizer.json").read_text() == "{}"
    assert run_cli(hf_main, ["export", str(run.path), str(target), "--overwrite"]) == 0
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").read_text() != "{}"
    assert not list(tmp_path.glob(".hf.*"))  # no staging or old copy left behind
    flip_bit(run.checkpoint_path(6), 100)
    flip_bit(run.checkpoint_path(4), 100)
    flip_bit(run.checkpoint_path(2), 100)
    assert run_cli(hf_main, ["export", str(run.path), str(tmp_path / "hf2")]) == 1
    assert "no loadable checkpoint" in capsys.readouterr().err and not (tmp_path / "hf2").exists()


def test_checkpoint_state_round_trips_through_the_checksum_writer(run6):
    run, _ = run6
    state, checkpoint = run.load_state()
    assert checkpoint.step == 6 and state["step"] == 6
    reference = torch.load(run.checkpoint_path(6), weights_only=False)
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, state["model"][name])
