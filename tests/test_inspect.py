"""The run inspector on a finished run, a run cut off mid-write, a run with known milestones, and
directories that are not runs."""

import json
import shutil

import pytest
from test_train import SMALL, run_train

from grokcopy.evals.inspect import inspect_run, main


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "run"
    proc = run_train([*SMALL, "--data", str(corpus), "--max-steps", "6", "--eval-every", "3", "--ckpt-every", "3",
                      "--out", str(out), "--no-tensorboard"])
    assert proc.returncode == 0, proc.stderr
    return out


def test_finished_run(finished_run, capsys):
    report = inspect_run(finished_run)
    assert report["preset"] == "tiny" and report["model"]["d_model"] == 32 and report["model"]["kv_heads"] == 2
    assert report["model"]["nope_layers"] == []  # one layer: tiny's nope_every = 3 leaves it RoPE
    assert report["progress"]["step"] == 6 and report["progress"]["tokens"] == 6 * 4 * 64
    assert report["progress"]["unreadable_lines"] == 0
    assert [c["step"] for c in report["checkpoints"]] == [3, 6] and report["resumable"]
    assert report["finished"] and report["final_step"] == 6
    assert report["copy"]["evals"] == 2 and len(report["induction"]["onset_step"]) == 1

    assert main([str(finished_run)]) == 0
    text = capsys.readouterr().out
    assert "finished  yes, at step 6" in text and "resumable: yes, from step 6" in text
    assert main([str(finished_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["final_step"] == 6


def test_the_model_line_names_the_layers_without_rope(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_train([*SMALL, "--n-layers", "2", "--nope-every", "2", "--data", str(corpus), "--max-steps", "2",
                      "--eval-every", "0", "--out", str(out), "--no-tensorboard"])
    assert proc.returncode == 0, proc.stderr
    assert inspect_run(out)["model"]["nope_layers"] == [1]
    assert main([str(out)]) == 0
    assert "model     2 layers x d32 (no RoPE in layer 1), 2 heads" in capsys.readouterr().out


def test_run_cut_off_mid_write(finished_run, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    (run / "final.json").unlink()
    metrics = run / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # half of the last line

    report = inspect_run(run)
    assert report["progress"]["unreadable_lines"] == 1 and report["progress"]["step"] == 5
    assert not report["finished"] and report["resumable"]
    assert main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "the last line of metrics.jsonl is cut" in out and "no final.json" in out


def test_milestones_and_onsets(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished_run / "config.json", run)
    evals = [(100, 0.1, [0.05, 0.2]), (200, 0.6, [0.1, 0.5]), (300, 0.4, [0.35, 0.7])]  # step, copy_acc, ind max
    lines = [{"step": s, "tokens": s * 256, "loss": 2.0, "copy_acc": acc, "copy_control_acc": 0.1,
              "copy_gain": acc - 0.1, "induction_max": ind, "elapsed_s": s / 10} for s, acc, ind in evals]
    lines[2]["elapsed_s"] = 5.0  # a resumed process restarts its clock
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    report = inspect_run(run, induction_threshold=0.3)
    assert report["copy"]["acc_50_step"] == 200 and report["copy"]["best_acc"] == {"step": 200, "copy_acc": 0.6}
    assert report["induction"]["onset_step"] == [300, 200]
    assert report["progress"]["wall_s"] == 20.0 + 5.0
    assert not report["checkpoints"] and not report["resumable"] and not report["finished"]
    assert inspect_run(run, induction_threshold=0.9)["induction"]["onset_step"] == [None, None]
    assert main([str(run), "--induction-threshold", "0.9"]) == 0
    assert "layer 0 never, layer 1 never" in capsys.readouterr().out


def test_not_a_run_directory(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "is not a grokcopy run directory (no config.json)" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # e.g. a Hugging Face export
    assert main([str(tmp_path)]) == 1
    assert "is not a grokcopy run directory" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 1
    assert "no such directory" in capsys.readouterr().err
