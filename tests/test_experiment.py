"""evals.experiment: the grids are well formed, --dry-run prints, and a tiny experiment runs end to
end and resumes (finished runs are skipped)."""

import shlex

from evals import experiment
from tests.test_train import SMALL


def test_every_preset_has_every_experiment():
    for grid in experiment.EXPERIMENTS.values():
        assert set(grid) == {"baseline", "batch-size", "lr", "regularization", "intensity"}
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
    assert "--lr 0.01" in lines[2] and str(tmp_path / "lr" / "lr0.01") in lines[2]
    assert not (tmp_path / "lr").exists()


def test_tiny_experiment_runs_and_resumes(corpus, tmp_path, monkeypatch, capsys):
    runs = [("lr-a", {"lr": 1e-3}), ("lr-b", {"lr": 3e-3})]
    monkeypatch.setitem(experiment.EXPERIMENTS["tiny"], "smoke", runs)
    argv = ["smoke", "--out", str(tmp_path), "--max-steps", "3",
            "--extra", shlex.join([*SMALL, "--data", str(corpus), "--eval-every", "0", "--ckpt-every", "0",
                                   "--no-tensorboard"])]
    assert experiment.main(argv) == 0
    for name, overrides in runs:
        run_dir = tmp_path / "smoke" / name
        assert (run_dir / "final.json").is_file()
        assert f'"lr": {overrides["lr"]}' in (run_dir / "config.json").read_text(), "the override wins over --extra"
    capsys.readouterr()
    assert experiment.main(argv) == 0
    assert capsys.readouterr().out.count("skip ") == 2
