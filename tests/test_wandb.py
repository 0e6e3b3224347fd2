"""--wandb with WANDB_MODE=offline (no network): W&B gets the very records of metrics.jsonl, under
TensorBoard's tag names, and a resumed run continues the same W&B run. Read back from W&B's own
offline file (a LevelDB-style log of protobuf records), not from our side of the call."""

import json
import struct

import pytest
from test_train import SMALL, run_train

wandb = pytest.importorskip("wandb", reason="needs the wandb extra: pip install -e '.[wandb]'")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from grokcopy.evals.tensorboard import scalar_tags  # noqa: E402
from grokcopy.model.run_dir import RunDir  # noqa: E402

BLOCK = 32768  # the log's block size; a record header is 7 bytes (crc32, length, type)


def wandb_history(path) -> list[dict]:
    """The history rows of a .wandb file: {key: value} per wandb.log call."""
    data, pos, rows, pending = path.read_bytes(), 7, [], b""  # 7: ":W&B", magic, version
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending, pos = pending + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_offline_wandb_holds_the_metrics_records(corpus, tmp_path):
    out = tmp_path / "run"
    args = [*SMALL, "--data", str(corpus), "--eval-every", "4", "--ckpt-every", "2", "--out", str(out), "--wandb"]
    first = run_train([*args, "--max-steps", "4"], WANDB_MODE="offline", WANDB_SILENT="true")
    assert first.returncode == 0, first.stderr
    resumed = run_train([*args, "--max-steps", "6"], WANDB_MODE="offline", WANDB_SILENT="true")
    assert resumed.returncode == 0, resumed.stderr
    run_ids = {p.name.rsplit("-", 1)[-1] for p in (out / "wandb").glob("offline-run-*")}
    assert run_ids == {RunDir(out).wandb_id_path.read_text().strip()}  # one W&B run, continued
    rows = [row for f in sorted((out / "wandb").glob("offline-run-*/run-*.wandb")) for row in wandb_history(f)]
    logged = {row["_step"]: row for row in rows}
    records = RunDir(out).read_metrics()[0]
    assert sorted(logged) == [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        for tag, value in scalar_tags(record).items():
            assert logged[record["step"]][tag] == pytest.approx(value, rel=1e-12), (record["step"], tag)


def test_wandb_asked_for_but_missing_is_one_error_line(corpus, tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.setattr(train, "wandb_available", lambda: False)
    assert train.main([*SMALL, "--data", str(corpus), "--out", str(tmp_path / "r"), "--wandb"]) == 2
    assert "--wandb, but the wandb package is not installed (pip install -e '.[wandb]')" in capsys.readouterr().err
