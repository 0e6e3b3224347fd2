"""python -m grokcopy.model.sample: text from a run's newest good checkpoint, and the copy demo."""

import pytest
from test_train import SMALL

import train
from grokcopy.cli import run_cli
from grokcopy.model.sample import main as sample_main


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "run"
    assert train.main([*SMALL, "--data", str(corpus), "--max-steps", "30", "--eval-every", "30",
                       "--out", str(out), "--no-tensorboard"]) == 0
    return out


def test_sampling_is_seeded_and_continues_the_prompt(run, capsys):
    args = [str(run), "--prompt", "def main(", "--max-new-tokens", "20", "--seed", "3"]
    assert run_cli(sample_main, args) == 0
    first = capsys.readouterr().out
    assert first.startswith("def main(") and len(first) > len("def main(")
    assert run_cli(sample_main, args) == 0 and capsys.readouterr().out == first  # the same seed, the same text
    assert run_cli(sample_main, [*args[:-1], "4"]) == 0


def test_copy_demo_shows_the_case_and_both_suffixes(run, capsys):
    assert run_cli(sample_main, [str(run), "--copy-demo", "--case", "5"]) == 0
    out = capsys.readouterr().out
    for line in ("copy case 5 of", "the prefix, given again:", "true suffix:", "model's greedy suffix:"):
        assert line in out
    assert "of 6 tokens right" in out


@pytest.mark.parametrize("args, message", [
    (["--copy-demo", "--case", "999"], "--case 999: the run has copy cases 0 to 199"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])
def test_mistakes_are_one_error_line(run, capsys, args, message):
    assert run_cli(sample_main, [str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_not_a_run_is_one_error_line(tmp_path, capsys):
    assert run_cli(sample_main, [str(tmp_path)]) == 2
    assert "no checkpoints" in capsys.readouterr().err
