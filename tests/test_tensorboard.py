"""TensorBoard: train.py's event files hold the numbers of metrics.jsonl, the induction image at each
eval, and a resumed run's log hides what the earlier process logged after the checkpoint."""

import json

import numpy as np
import pytest
from test_train import SMALL, run_train

import train
from grokcopy.evals.tensorboard import TensorBoardLog, scalar_tags

pytest.importorskip("tensorboard", reason="needs the tb extra: pip install -e '.[tb]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_events(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})  # 0: keep every event
    events.Reload()
    return events


def test_event_files_hold_the_metrics_jsonl_numbers(corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_train([*SMALL, "--data", str(corpus), "--max-steps", "6", "--eval-every", "3", "--out", str(out),
                      "--tensorboard", "--train-stats-every", "2"])
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for tag, value in scalar_tags(record).items():
            # TensorBoard keeps scalars as float32: the same number, rounded once
            expected.setdefault(tag, []).append((record["step"], float(np.float32(value))))
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/val_loss", "copy/copy_acc",
            "copy/copy_gain", "eval/repeat_acc", "induction_max/layer_0",
            "previous_token_max/layer_0", "prefix_matching_max/layer_0", "train_previous_token_max/layer_0"
            } <= set(expected)

    events = read_events(out / "tb")
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        assert [(e.step, e.value) for e in events.Scalars(tag)] == points, tag
    assert [e.step for e in events.Images("induction/heads")] == [3, 6]


def test_a_resumed_log_replaces_the_steps_logged_again(tmp_path):
    first = TensorBoardLog(tmp_path)
    for step in range(1, 6):
        first.write({"step": step, "loss": float(step)})
    first.close()
    # resumed from a checkpoint at step 3: steps 4 and 5 are trained and logged again
    resumed = TensorBoardLog(tmp_path, purge_step=4)
    for step in range(4, 7):
        resumed.write({"step": step, "loss": 10.0 * step})
    resumed.close()
    points = [(e.step, e.value) for e in read_events(tmp_path).Scalars("train/loss")]
    assert points == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


def test_tensorboard_flag(corpus, tmp_path, capsys, monkeypatch):
    assert train.parse_args([])[0].tensorboard is None  # None: on when the package is installed
    assert train.parse_args(["--no-tensorboard"])[0].tensorboard is False
    monkeypatch.setattr(train, "tensorboard_available", lambda: False)
    code = train.main(["--tensorboard", "--data", str(corpus), "--out", str(tmp_path / "run")])
    assert code == 2 and "tensorboard package is not installed" in capsys.readouterr().err
