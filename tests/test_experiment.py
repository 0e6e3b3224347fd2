"""evals.experiment: the grids are well formed, --dry-run prints, and a tiny experiment runs end to
end and resumes (finished runs are skipped)."""

import shlex

import pytest

from grokcopy.evals import experiment
from tests.test_train import SMALL


def test_every_preset_has_every_experiment():
    for grid in experiment.EXPERIMENTS.values():
        assert set(grid) == {"baseline", "batch-size", "lr", "regularization", "depth", "intensity"}
        assert len(grid["batch-size"]) == len(grid["lr"]) == 3 and len(grid["regularization"]) == 4
        assert len(grid["intensity"]) == 9
        for runs in grid.values():
            assert len({name for name, _ in runs}) == len(runs), "run names are unique"
    assert experiment.flags({"batch_size": 4, "compile": True, "fsdp": False}) == [
        "--batch-size", "4", "--compile", "--no-fsdp"]


def test_dry_run_prints_commands(tmp_path, capsys):
    assert experiment.main(["lr", "--out", str(tmp_path), "--dry-run", "--nproc-per-node", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("torchrun --standalone --nproc-per-node=2") for line in lines)
    assert "--lr 0.03" in lines[2] and str(tmp_path / "runs" / "lr0.03-bs8-wd0.1-do0") in lines[2]
    # the cosine floor follows each run's LR at the preset's ratio (tiny: lr / 100)
    floors = [shlex.split(line)[shlex.split(line).index("--min-lr") + 1] for line in lines]
    assert floors == ["3e-05", "0.0001", "0.0003"]
    assert experiment.floor_ratio("paper-162m") == pytest.approx(0.1)  # it fixes min_lr = lr / 10
    assert not (tmp_path / "lr").exists()


def test_runs_shared_between_experiments_train_once(tmp_path, capsys):
    """The baseline is in four experiments and the intensity grid holds the lr and batch-size runs."""
    assert experiment.main(["all", "--out", str(tmp_path), "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    # 1 + 2 (batch) + 2 (lr) + 3 (regularization) + 1 (depth) + 4 (intensity)
    assert len(commands) == len(set(commands)) == 13
    assert experiment.run_name({"lr": 0.003, "batch_size": 4, "weight_decay": 0.1, "dropout": 0.0}) == \
        "lr0.003-bs4-wd0.1-do0"


def test_seeds_and_accum_name_runs_and_split_batches(tmp_path, capsys):
    """--seeds runs seed-major (every configuration's seed 0 first); --accum keeps the batch, in micro-batches."""
    assert experiment.main(["batch-size", "--out", str(tmp_path), "--dry-run", "--seeds", "2", "--accum", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("--out ")[1].split()[0].rsplit("/", 1)[1] for line in lines] == [
        "lr0.01-bs4-wd0.1-do0-accum2", "lr0.01-bs8-wd0.1-do0-accum2", "lr0.01-bs16-wd0.1-do0-accum2",
        "lr0.01-bs4-wd0.1-do0-seed1-accum2", "lr0.01-bs8-wd0.1-do0-seed1-accum2", "lr0.01-bs16-wd0.1-do0-seed1-accum2"]
    assert "--batch-size 8" in lines[2] and "--global-batch 16" in lines[2] and "--seed 1" in lines[3]
    # under torchrun --global-batch counts every rank's sequences: 8 ranks x 32 per rank, in micro-batches of 16
    assert experiment.main(["baseline", "--preset", "paper-162m", "--nproc-per-node", "8", "--accum", "2",
                            "--out", str(tmp_path), "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert "--batch-size 16" in line and "--global-batch 256" in line
    with pytest.raises(SystemExit, match="--accum 3 does not divide the batch size 4"):
        experiment.main(["batch-size", "--out", str(tmp_path), "--dry-run", "--accum", "3"])


def test_tiny_experiment_runs_and_resumes(corpus, tmp_path, monkeypatch, capsys):
    runs = [("lr-a", {"lr": 1e-3}), ("lr-b", {"lr": 3e-3})]
    monkeypatch.setitem(experiment.EXPERIMENTS["tiny"], "smoke", runs)
    monkeypatch.setitem(experiment.EXPERIMENTS["tiny"], "smoke-again", runs[1:])
    argv = ["smoke", "smoke-again", "--out", str(tmp_path), "--max-steps", "3", "--jobs", "2",
            "--extra", shlex.join([*SMALL, "--data", str(corpus), "--eval-every", "0", "--ckpt-every", "0",
                                   "--no-tensorboard"])]
    assert experiment.main(argv) == 0
    for name, overrides in runs:
        run_dir = tmp_path / "smoke" / name
        trained = tmp_path / "runs" / f"{experiment.run_name(overrides)}-steps3"  # shortened: named apart
        assert run_dir.is_symlink() and run_dir.resolve() == trained
        assert (run_dir / "final.json").is_file()
        assert f'"lr": {overrides["lr"]}' in (run_dir / "config.json").read_text(), "the override wins over --extra"
        assert (tmp_path / "logs" / f"{trained.name}.log").is_file(), "--jobs 2 logs to files"
    assert (tmp_path / "smoke-again" / "lr-b").resolve() == (tmp_path / "smoke" / "lr-b").resolve()
    out = capsys.readouterr().out
    assert out.count("done ") == 2, "the run in both experiments trains once"
    assert experiment.main(argv) == 0
    assert capsys.readouterr().out.count("skip ") == 2


def test_a_run_in_use_is_left_alone(tmp_path, capsys):
    """A run directory another process trains into (train.py holds its lock) is skipped, not trained twice."""
    from grokcopy.model.run_dir import RunDir

    run_dir = tmp_path / "runs" / "lr0.01-bs8-wd0.1-do0-steps1"
    lock = RunDir(run_dir)
    lock.lock()
    assert experiment.main(["baseline", "--out", str(tmp_path), "--max-steps", "1"]) == 0
    assert "skip " + str(run_dir) + " (in use by another training process)" in capsys.readouterr().out
    assert not (run_dir / "metrics.jsonl").exists()
    lock.unlock()
