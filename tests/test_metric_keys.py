"""Every key a real run writes into metrics.jsonl is named and described in evals/metric_keys.py."""

from test_train import SMALL

import train
from grokcopy.cli import run_cli
from grokcopy.evals import metric_keys as mk
from grokcopy.model.run_dir import RunDir


def test_every_key_a_run_writes_is_described(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*SMALL, "--data", str(corpus), "--out", str(out), "--max-steps", "4", "--eval-every", "2",
            "--train-stats-every", "2", "--grad-accum", "2", "--no-tensorboard"]
    assert run_cli(train.main, argv) == 0, capsys.readouterr().err
    records, unreadable = RunDir(out).read_metrics()
    assert unreadable == 0 and len(records) == 4
    keys = set().union(*records)
    # the run exercised every kind of record: training, eval, head scores on training batches, noise scale
    assert {*mk.TRAINING_RECORD, mk.VAL_LOSS, mk.COPY_GAIN, mk.best_head(mk.INDUCTION), mk.NOISE_SCALE} <= keys
    assert any(k.startswith(mk.TRAIN_PREFIX) for k in keys)
    assert [k for k in sorted(keys) if mk.describe(k) is None] == []


def test_describe_knows_derived_keys_and_not_others():
    assert "on training batches" in mk.describe("train_previous_token_max")
    assert mk.describe(mk.best_head(mk.INDUCTION)).startswith("best head per layer")
    assert mk.describe("copy_gian") is None
    assert mk.describe("train_val_loss") is None
