"""Lose nothing, second round (issue 30): no command deletes or replaces what it did not write, and no
damaged or changed input is used without a word. One section per class of the issue; the issue's
examples are marked "(issue)". The bar: the user's files are byte-identical afterwards, and every
refusal is one `error:` line naming the path."""

import errno
import json
import shutil
import sysconfig
from pathlib import Path

import pytest
from test_run_faults import BASE, flip_bit, train_cli

from grokcopy.cli import describe, run_cli
from grokcopy.data.prepare import bytes_tokenizer, prepare
from grokcopy.data.prepare import main as prepare_main
from grokcopy.data.sources import collect_sources
from grokcopy.model import load_checkpoint
from grokcopy.model.run_dir import CheckpointError, RunDir, sidecar_path
from grokcopy.ownership import EXPORT_MARKER, RUN_MARKER, output_kind


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run4(corpus, tmp_path, capsys):
    """A finished run with checkpoints at steps 2 and 4."""
    out = tmp_path / "run"
    args = [*BASE, "--data", str(corpus), "--out", str(out)]
    code, _, err = train_cli([*args, "--max-steps", "4"], capsys)
    assert code == 0, err
    return RunDir(out), args


def user_dir(path):
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("my thesis\n")
    (path / ".backup.tmp").write_text("looks like a temp file, is not\n")
    (path / "config.json").write_text('{"mine": true}\n')
    return snapshot(path)


# --- 1. destroying what grokcopy did not write ------------------------------------------------------


def hf_main():
    pytest.importorskip("transformers", reason="needs the hf extra: pip install -e '.[hf]'")
    from grokcopy.model.hf import main

    return main


def test_export_over_its_own_run_is_refused_and_the_run_kept(run4, capsys):
    """(issue) `export RUN RUN --overwrite` deleted the training run."""
    run, _ = run4
    before = snapshot(run.path)
    assert run_cli(hf_main(), ["export", str(run.path), str(run.path), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "never replaces its own input" in err
    assert snapshot(run.path) == before


def test_export_over_another_run_is_refused(run4, tmp_path, capsys):
    run, _ = run4
    other = tmp_path / "other"
    shutil.copytree(run.path, other)
    before = snapshot(other)
    assert run_cli(hf_main(), ["export", str(run.path), str(other), "--overwrite"]) == 2
    assert "a grokcopy run directory" in capsys.readouterr().err and snapshot(other) == before


def test_export_overwrite_over_a_users_directory_is_refused(run4, tmp_path, capsys):
    """(issue) `export RUN DIR --overwrite` deleted a user's unrelated files in DIR."""
    run, _ = run4
    before = user_dir(tmp_path / "mine")
    assert run_cli(hf_main(), ["export", str(run.path), str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "files grokcopy did not write" in capsys.readouterr().err
    assert snapshot(tmp_path / "mine") == before


def test_export_overwrite_keeps_a_file_the_user_added_to_an_export(run4, tmp_path, capsys):
    run, _ = run4
    out = tmp_path / "hf"
    main = hf_main()
    assert run_cli(main, ["export", str(run.path), str(out)]) == 0 and output_kind(out) == "export"
    (out / "README.md").write_text("model card\n")
    assert run_cli(main, ["export", str(run.path), str(out), "--overwrite"]) == 2
    assert "README.md" in capsys.readouterr().err and (out / "README.md").read_text() == "model card\n"


def test_export_from_a_checkpoint_into_its_own_run_is_refused(run4, capsys):
    run, _ = run4
    before = snapshot(run.path)
    assert run_cli(hf_main(), ["export", str(run.checkpoint_path(4)), str(run.path), "--overwrite"]) == 2
    assert snapshot(run.path) == before


def test_train_into_a_users_directory_is_refused_before_anything_is_touched(corpus, tmp_path, capsys):
    """(issue) train --out DIR wrote the run among the user's files and deleted `.backup.tmp`."""
    before = user_dir(tmp_path / "mine")
    code, _, err = train_cli([*BASE, "--data", str(corpus), "--out", str(tmp_path / "mine"), "--max-steps", "2"],
                             capsys)
    assert code == 2 and err.count("\n") == 1 and "not empty and not a grokcopy run" in err
    assert snapshot(tmp_path / "mine") == before and not (tmp_path / "mine" / ".lock").exists()


def test_train_with_data_and_out_swapped_is_refused(corpus, tmp_path, capsys):
    """2 a.m.: --out names the corpus. The corpus is not touched."""
    before = snapshot(corpus)
    code, _, err = train_cli([*BASE, "--data", str(corpus), "--out", str(corpus), "--max-steps", "2"], capsys)
    assert code == 2 and "a grokcopy corpus" in err and "swap" in err
    assert snapshot(corpus) == before


def test_train_into_an_export_is_refused(tmp_path, corpus, capsys):
    export = tmp_path / "hf"
    export.mkdir()
    (export / EXPORT_MARKER).write_text('{"kind": "export", "files": []}')
    (export / "model.safetensors").write_bytes(b"weights")
    code, _, err = train_cli([*BASE, "--data", str(corpus), "--out", str(export), "--max-steps", "2"], capsys)
    assert code == 2 and "a grokcopy export" in err and (export / "model.safetensors").read_bytes() == b"weights"


def test_a_new_run_is_marked_and_an_old_unmarked_run_is_still_one(tmp_path):
    run = RunDir(tmp_path / "new")
    run.lock()
    run.unlock()
    assert (run.path / RUN_MARKER).is_file() and output_kind(run.path) == "run"
    old = tmp_path / "old"  # a run from before the marker: config.json with preset and model
    old.mkdir()
    (old / "config.json").write_text('{"preset": "tiny", "model": {}}')
    assert output_kind(old) == "run"
    RunDir(old).lock()


def test_in_use_writes_nothing(tmp_path):
    before = user_dir(tmp_path / "mine")
    assert not RunDir(tmp_path / "mine").in_use() and snapshot(tmp_path / "mine") == before


def test_prepare_overwrite_never_replaces_a_run(run4, tmp_path, capsys):
    run, _ = run4
    (tmp_path / "text.txt").write_text("hello world " * 50)
    before = snapshot(run.path)
    with pytest.raises(SystemExit) as exit_:
        prepare_main(["--input", str(tmp_path / "text.txt"), "--out", str(run.path), "--bytes", "--overwrite",
                      "--quiet"])
    assert exit_.value.code == 2 and snapshot(run.path) == before


# --- 2. replacing history without a word ------------------------------------------------------------


def test_a_run_without_checkpoints_is_not_replaced_without_restart(run4, capsys):
    """(issue) a finished run whose checkpoints are gone, started again with another recipe."""
    run, args = run4
    shutil.rmtree(run.checkpoints_dir)
    before = snapshot(run.path)
    code, _, err = train_cli([*args, "--max-steps", "2", "--lr", "1e-3"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--restart" in err
    assert "config.json" in err and "metrics.jsonl with 4 records up to step 4" in err and "final.json" in err
    assert snapshot(run.path) == {k: v for k, v in before.items()}


def test_restart_starts_over_and_keeps_the_users_lines(run4, capsys):
    run, args = run4
    shutil.rmtree(run.checkpoints_dir)
    with open(run.metrics_path, "ab") as f:
        f.write(b"note: lr 3e-3 was too slow\n")
    code, _, err = train_cli([*args, "--max-steps", "2", "--lr", "1e-3", "--restart"], capsys)
    assert code == 0, err
    assert [r["step"] for r in run.read_metrics()[0]] == [1, 2] and b"note: lr 3e-3" in run.metrics_path.read_bytes()
    assert json.loads(run.config_path.read_text())["lr"] == 1e-3 and run.read_final()["step"] == 2


def test_restart_never_deletes_checkpoints(run4, capsys):
    run, args = run4
    code, _, err = train_cli([*args, "--max-steps", "6", "--restart"], capsys)
    assert code == 2 and "never deletes a checkpoint" in err and [c.step for c in run.checkpoints()] == [2, 4]


# --- 3. records grokcopy did not write --------------------------------------------------------------


def metrics_run(tmp_path, lines: list[bytes], tail: bytes = b"") -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    run.metrics_path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)
    return run


def record(step: int) -> bytes:
    return json.dumps({"step": step, "tokens": 64 * step, "loss": 5.0}).encode()


@pytest.mark.parametrize("foreign", [
    b"my note: the LR change starts here",
    "r\xe9sum\xe9 en fran\xe7ais".encode("latin-1"),  # (issue) a line in another encoding
    b'{"step": 9, "note": "not a grokcopy record"}',
    b'{"step": 3, "loss": nonsense',  # a damaged record is kept (the user may want it)
    b"\xff\xfe\x00binary",
])
def test_resume_keeps_every_line_that_is_not_a_grokcopy_record(tmp_path, foreign):
    """(issue) resume altered or dropped a user's note and a line in another encoding."""
    run = metrics_run(tmp_path, [record(1), record(2), foreign, record(3), record(4)])
    run.truncate_metrics(2)
    assert run.metrics_path.read_bytes() == record(1) + b"\n" + record(2) + b"\n" + foreign + b"\n"


def test_resume_drops_a_cut_record_but_keeps_a_users_unterminated_line(tmp_path):
    run = metrics_run(tmp_path, [record(1), record(2)], tail=record(3)[:20])  # a kill mid-append
    run.truncate_metrics(2)
    assert run.metrics_path.read_bytes() == record(1) + b"\n" + record(2) + b"\n"
    run = metrics_run(tmp_path / "b", [record(1)], tail=b"a note without newline")
    run.truncate_metrics(5)
    assert run.metrics_path.read_bytes() == record(1) + b"\na note without newline\n"


def test_readers_skip_lines_that_are_not_records(tmp_path):
    run = metrics_run(tmp_path, [record(1), b'{"step": 9, "note": "x"}', record(2)])
    records, other = run.read_metrics()
    assert [r["step"] for r in records] == [1, 2] and other == 1


def test_resume_end_to_end_keeps_a_note(run4, capsys):
    run, args = run4
    with open(run.metrics_path, "ab") as f:
        f.write("caf\xe9\n".encode("latin-1"))
    code, _, err = train_cli([*args, "--max-steps", "6"], capsys)
    assert code == 0, err
    assert "caf\xe9\n".encode("latin-1") in run.metrics_path.read_bytes()


# --- 4. verification that can be switched off by accident (more in test_run_faults.py) ---------------


def test_a_damaged_checksum_file_is_named(run4):
    run, _ = run4
    sidecar_path(run.checkpoint_path(4)).write_text("garbage\n")
    with pytest.raises(CheckpointError, match=r"step-00000004.pt.sha256 is damaged"):
        load_checkpoint(run.checkpoint_path(4))


def test_a_checkpoint_copied_with_its_checksum_verifies_on_its_own(run4, tmp_path):
    run, _ = run4
    (tmp_path / "copy" / "checkpoints").mkdir(parents=True)
    for path in (run.checkpoint_path(4), sidecar_path(run.checkpoint_path(4))):
        shutil.copy(path, tmp_path / "copy" / "checkpoints" / path.name)
    copied = tmp_path / "copy" / "checkpoints" / run.checkpoint_path(4).name
    assert load_checkpoint(copied)[1].d_model == 32
    flip_bit(copied, 200)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(copied)


# --- 5. a run silently continuing on other data -----------------------------------------------------


def test_resume_on_a_re_prepared_corpus_is_refused_unless_change_recipe(corpus, tmp_path, capsys):
    """(issue) re-preparing the run's --data path from other text, then resuming."""
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    out = tmp_path / "run"
    args = [*BASE, "--data", str(data), "--out", str(out)]
    assert train_cli([*args, "--max-steps", "2"], capsys)[0] == 0
    # the same files with one byte changed: the same token counts (the sampler can continue), other tokens
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for name in ("os.py", "argparse.py", "random.py", "textwrap.py", "shlex.py"):
        files.append(tmp_path / name)
        files[-1].write_bytes(stdlib.joinpath(name).read_bytes().replace(b"import", b"IMPORT", 1))
    prepare(collect_sources(files), data, tokenizer=bytes_tokenizer(), val_fraction=0.4, progress=False, overwrite=True)
    code, _, err = train_cli([*args, "--max-steps", "4"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is not the corpus" in err and "train/shard-00000.tok" in err
    code, _, err = train_cli([*args, "--max-steps", "4", "--change-recipe"], capsys)
    assert code == 0, err
    changes = json.loads((out / "config.json").read_text())["recipe_changes"]
    assert changes[-1]["step"] == 2 and "corpus" in changes[-1]["changes"]


# --- 6. reading your own output ---------------------------------------------------------------------


def test_prepare_never_reads_its_own_output(tmp_path, capsys):
    """(issue) `prepare --input D --out D/corpus`, run again with --overwrite, read the old corpus."""
    docs = tmp_path / "d"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha " * 200)
    (docs / "b.txt").write_text("beta " * 200)
    args = ["--input", str(docs), "--out", str(docs / "corpus"), "--bytes", "--quiet", "--val-fraction", "0.5"]
    prepare_main(args)
    first = json.loads((docs / "corpus" / "meta.json").read_text())
    capsys.readouterr()
    prepare_main([*args, "--overwrite"])
    second = json.loads((docs / "corpus" / "meta.json").read_text())
    assert second["input_files"] == first["input_files"] == 2 and second["splits"] == first["splits"]
    assert "corpus (the output directory)" in capsys.readouterr().err


def test_prepare_input_inside_out_is_refused(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("x" * 100)
    with pytest.raises(SystemExit) as exit_:
        prepare_main(["--input", str(tmp_path / "c"), "--out", str(tmp_path / "c"), "--bytes", "--quiet"])
    assert exit_.value.code == 2 and "is the --out directory" in capsys.readouterr().err
    assert (tmp_path / "c" / "a.txt").read_text() == "x" * 100


def test_runs_corpora_and_exports_inside_the_inputs_are_skipped_and_named(run4, corpus, tmp_path):
    run, _ = run4
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("text")
    shutil.copytree(run.path, docs / "run")
    shutil.copytree(corpus, docs / "corpus")
    (docs / "hf").mkdir()
    (docs / "hf" / EXPORT_MARKER).write_text("{}")
    (docs / "hf" / "tokenizer.json").write_text("{}")
    sources = collect_sources([docs])
    assert sources.files == [docs / "a.txt"]
    assert sorted(p.name for p, _ in sources.excluded) == ["corpus", "hf", "run"]
    assert collect_sources([docs / "run" / "config.json"]).files == []  # named directly, still a run's file


# --- 7. numbers that cannot train -------------------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--min-lr", "inf"),
                                         ("--grad-clip", "inf"), ("--weight-decay", "nan"),
                                         ("--rope-theta", "inf"), ("--init-std", "nan")])
def test_every_float_flag_must_be_finite(corpus, tmp_path, capsys, flag, value):
    """(issue) --lr inf was accepted while nan was refused."""
    code, _, err = train_cli([*BASE, "--data", str(corpus), "--out", str(tmp_path / "r"), flag, value], capsys)
    assert code == 2 and err.startswith(f"error: {flag} ") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_an_exploding_loss_stops_with_an_error_line_and_status_1(corpus, tmp_path, capsys):
    """(issue) --lr 10 --warmup-steps 0 ended with exit 0 (loss 234); divergence went to stdout, exit 3."""
    code, out, err = train_cli([*BASE, "--data", str(corpus), "--out", str(tmp_path / "r"), "--lr", "10",
                                "--warmup-steps", "0", "--max-steps", "50"], capsys)
    assert code == 1 and err.startswith("error: loss is ") and "diverged" in err and err.count("\n") == 1
    assert "error" not in out


def test_a_full_disk_names_the_file_and_the_disk(tmp_path):
    line = describe(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x" / "step-00000004.pt")))
    assert line.startswith(f"{tmp_path / 'x' / 'step-00000004.pt'}: No space left on device (the disk is full: ")
    assert "the file system mounted at /" in line and "MiB free" in line
