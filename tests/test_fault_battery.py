"""Lose nothing, third battery (issue 30): what a tired researcher does at 2 a.m. with every command
line: arguments swapped, the same path twice, a path through a symlink or written another way, a
second terminal, Ctrl-C, a full disk, a run moved to another directory. None of these cases repeats
one of tests/test_ownership.py or tests/test_run_faults.py.

The bar for each case: the user's files are byte-identical afterwards (hashed before and after), and
a mistake ends with a nonzero status and exactly one `error:` line that names the path or flag; an
exception that is not one of grokcopy's own user-facing errors counts as a traceback, even when
run_cli turns it into one line, because its words are the interpreter's, not an explanation.

Counts, as for the earlier batteries: 48 cases (parametrized cases counted one by one).
- Before the fixes (at 6b53489): 0 tracebacks, 6 silent wrong results or lost data, 42 correct.
  Lost data: report --out over a directory holding the user's own report.md replaced it. Silent:
  train --out inside a corpus was accepted; prepare --input DIR DIR/doc.txt read doc.txt twice (5
  documents from 3 files, so one can sit in train and in val); report --out RUN wrote report.md and
  figures into the run; report RUN ALIAS (the same run twice) counted it as two seeds; experiment
  --out RUN made runs/ and links inside the run.
- After the fixes: 0 tracebacks, 0 silent wrong results, 48 correct (experiment --out RUN: fixed in
  evals/experiment.py, which now refuses an --out that is or lies inside a run, a corpus or an export).
"""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_run_faults import BASE, FullDisk, flip_bit
from test_train import ROOT, env

import grokcopy.cli
import train
from grokcopy.cli import run_cli
from grokcopy.data.prepare import main as prepare_main
from grokcopy.evals.inspect import main as inspect_main
from grokcopy.evals.report import main as report_main
from grokcopy.model.run_dir import RunDir
from grokcopy.model.sample import main as sample_main
from grokcopy.ownership import output_kind

# The exceptions whose message is written for the user; anything else reaching run_cli is a bug.
USER_FACING = ("UsageError", "ConfigError", "NotARunError", "PrepareError", "CheckpointError", "RunDirInUse",
               "DataError", "CorpusError", "CorpusTooSmallError", "ShardFormatError", "Diverged")


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of every file under `folder` (symlinks not followed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def internal_errors(monkeypatch):
    """Records every exception run_cli turns into an error line, to tell a traceback from a refusal."""
    seen = []
    real = grokcopy.cli.describe

    def describe(error):
        seen.append(error)
        return real(error)

    monkeypatch.setattr(grokcopy.cli, "describe", describe)
    return seen


def cli(main, argv, capsys, internal_errors) -> tuple[int, str, str]:
    """(status, stdout, stderr) of one command line, run in-process as `python -m ...` runs it."""
    try:
        code = run_cli(main, argv)
    except SystemExit as exit_:  # prepare's main and argparse exit by themselves
        code = exit_.code
    captured = capsys.readouterr()
    for error in internal_errors:
        assert type(error).__name__ in USER_FACING or isinstance(error, OSError), \
            f"a traceback in disguise: {type(error).__name__}: {error}"
    return code, captured.out, captured.err


def refused(code: int, err: str, *names: str) -> None:
    """A refusal: nonzero status, exactly one error line, naming each of `names`."""
    assert code not in (0, None), err
    lines = err.splitlines()
    assert [line.startswith("error: ") for line in lines].count(True) == 1 and lines[-1].startswith("error: "), err
    assert "Traceback" not in err and all(line.startswith(("error: ", "warning: ", "waiting ")) for line in lines), err
    for name in names:
        assert str(name) in err, (name, err)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, corpus):
    """A finished run with checkpoints at steps 2 and 4 (copied for each test that needs one)."""
    out = tmp_path_factory.mktemp("battery") / "run"
    assert run_cli(train.main, [*BASE, "--data", str(corpus), "--out", str(out), "--max-steps", "4",
                                "--eval-every", "2"]) == 0
    return out


@pytest.fixture
def run(pristine, tmp_path) -> RunDir:
    shutil.copytree(pristine, tmp_path / "run", symlinks=True)
    return RunDir(tmp_path / "run")


def args_for(run: RunDir, corpus: Path, *more: str) -> list[str]:
    return [*BASE, "--data", str(corpus), "--out", str(run.path), *more]


def hf_main():
    pytest.importorskip("transformers", reason="needs the hf extra: pip install -e '.[hf]'")
    from grokcopy.model.hf import main

    return main


def text_dir(path: Path, n: int = 3) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (path / f"doc{i}.txt").write_text(f"document {i} " * 300)
    return path


PREPARE = ["--bytes", "--quiet", "--val-fraction", "0.34"]


# --- train.py -----------------------------------------------------------------------------------------


def test_train_data_names_a_run_instead_of_a_corpus(run, tmp_path, capsys, internal_errors):
    """--data and --out mixed up the other way: --data is a run directory."""
    before = snapshot(run.path)
    code, _, err = cli(train.main, [*BASE, "--data", str(run.path), "--out", str(tmp_path / "new"),
                                    "--max-steps", "2"], capsys, internal_errors)
    refused(code, err, "--data")
    assert snapshot(run.path) == before and not (tmp_path / "new").exists()


def test_train_out_inside_the_corpus_is_refused(corpus, tmp_path, capsys, internal_errors):
    """A run written into the corpus directory would be read by the next prepare of that tree."""
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    before = snapshot(data)
    code, _, err = cli(train.main, [*BASE, "--data", str(data), "--out", str(data / "run"), "--max-steps", "2"],
                       capsys, internal_errors)
    refused(code, err, "--out")
    assert snapshot(data) == before


def test_train_config_file_is_a_runs_config_json(run, corpus, tmp_path, capsys, internal_errors):
    """--config RUN/config.json (the file a run records its recipe in): either a clear refusal or a new
    run with that recipe; the run's config.json is never touched."""
    before = snapshot(run.path)
    code, out, err = cli(train.main, ["--config", str(run.config_path), "--out", str(tmp_path / "new"),
                                      "--data", str(corpus), "--max-steps", "2"], capsys, internal_errors)
    if code != 0:
        refused(code, err, "--config")
    assert snapshot(run.path) == before


def test_config_toml_with_the_out_of_another_run_and_another_lr_is_refused(run, corpus, tmp_path, capsys,
                                                                           internal_errors):
    before = snapshot(run.path)
    toml = tmp_path / "c.toml"
    toml.write_text(f'out = "{run.path}"\ndata = "{corpus}"\nlr = 1e-2\nmax_steps = 6\n')
    argv = [a for a in BASE]
    lr = argv.index("--lr")
    del argv[lr:lr + 2]
    code, _, err = cli(train.main, ["--config", str(toml), *argv], capsys, internal_errors)
    refused(code, err, "--change-recipe")
    assert snapshot(run.path) == before


def test_a_run_moved_to_another_directory_resumes(run, corpus, tmp_path, capsys, internal_errors):
    moved = tmp_path / "moved here"
    os.rename(run.path, moved)
    code, out, err = cli(train.main, [*BASE, "--data", str(corpus), "--out", str(moved), "--max-steps", "6"],
                         capsys, internal_errors)
    assert code == 0 and "from step 4" in out, err
    assert [r["step"] for r in RunDir(moved).read_metrics()[0]] == [1, 2, 3, 4, 5, 6]


def test_a_second_trainer_through_a_symlink_is_refused(run, corpus, tmp_path, capsys, internal_errors):
    """Two terminals: one trains RUN, the other the same run through a symlink."""
    link = tmp_path / "link"
    link.symlink_to(run.path)
    run.lock()
    try:
        before = snapshot(run.path)
        code, _, err = cli(train.main, [*BASE, "--data", str(corpus), "--out", str(link), "--max-steps", "6"],
                           capsys, internal_errors)
        refused(code, err, "in use")
        assert snapshot(run.path) == before
    finally:
        run.unlock()


def test_a_second_trainer_by_a_relative_path_is_refused(run, corpus, tmp_path, capsys, internal_errors,
                                                       monkeypatch):
    run.lock()
    try:
        monkeypatch.chdir(run.path / "checkpoints")
        code, _, err = cli(train.main, [*BASE, "--data", str(corpus), "--out", "../../run/.", "--max-steps", "6"],
                           capsys, internal_errors)
        refused(code, err, "in use")
    finally:
        run.unlock()


def test_resume_through_a_symlink_continues_the_run(run, corpus, tmp_path, capsys, internal_errors):
    link = tmp_path / "latest"
    link.symlink_to(run.path)
    code, out, err = cli(train.main, [*BASE, "--data", str(corpus), "--out", str(link), "--max-steps", "6"],
                         capsys, internal_errors)
    assert code == 0 and "from step 4" in out, err
    assert link.is_symlink() and [c.step for c in run.checkpoints()][-1] == 6


def test_checkpoints_replaced_by_a_file_is_one_error_line(run, corpus, capsys, internal_errors):
    shutil.rmtree(run.checkpoints_dir)
    run.checkpoints_dir.write_text("my notes on the checkpoints\n")
    before = snapshot(run.path)
    code, _, err = cli(train.main, args_for(run, corpus, "--max-steps", "6"), capsys, internal_errors)
    refused(code, err, "checkpoints")
    assert snapshot(run.path) == before


def test_keep_ckpts_1_with_a_damaged_newest_keeps_the_good_one_until_a_new_one(run, corpus, capsys,
                                                                                internal_errors):
    flip_bit(run.checkpoint_path(4), 200)
    code, out, err = cli(train.main, [*args_for(run, corpus, "--max-steps", "6"), "--keep-ckpts", "1"], capsys,
                         internal_errors)
    assert code == 0 and "from step 2" in out, err
    good = [c.step for c in run.checkpoints()]
    assert good[-1] == 6
    run.verify(run.checkpoint_path(6))


@pytest.mark.parametrize("keep", ["0", "-1"])
def test_keep_ckpts_below_one_never_deletes_every_checkpoint(run, corpus, capsys, internal_errors, keep):
    before = snapshot(run.checkpoints_dir)
    code, _, err = cli(train.main, [*args_for(run, corpus, "--max-steps", "6"), "--keep-ckpts", keep], capsys,
                       internal_errors)
    if code != 0:
        refused(code, err, "--keep-ckpts")
        assert snapshot(run.checkpoints_dir) == before
    assert run.checkpoints(), "every checkpoint deleted"


def test_ctrl_c_during_training_keeps_the_checkpoints_and_resumes(run, corpus, capsys, internal_errors,
                                                                  monkeypatch):
    """Ctrl-C in the middle of the resumed run: status 130, one line, the run resumable from step 4."""
    before = snapshot(run.checkpoints_dir)
    real = train.main.__globals__["Llama"].forward
    calls = []

    def forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(train.main.__globals__["Llama"], "forward", forward)
    code, _, err = cli(train.main, args_for(run, corpus, "--max-steps", "8"), capsys, internal_errors)
    assert code == 130 and err == "error: interrupted\n"
    assert snapshot(run.checkpoints_dir) == before and not run.in_use()
    monkeypatch.setattr(train.main.__globals__["Llama"], "forward", real)
    code, out, err = cli(train.main, args_for(run, corpus, "--max-steps", "6"), capsys, internal_errors)
    assert code == 0 and "from step 4" in out, err


def test_a_path_with_spaces_and_unicode_trains_samples_and_inspects(corpus, tmp_path, capsys, internal_errors):
    out = tmp_path / "my runs" / "ラン 1 (lr=3e-3)"
    code, _, err = cli(train.main, [*BASE, "--data", str(corpus), "--out", str(out), "--max-steps", "2"], capsys,
                       internal_errors)
    assert code == 0, err
    code, out_text, err = cli(sample_main, [str(out), "--max-new-tokens", "4"], capsys, internal_errors)
    assert code == 0, err
    code, out_text, err = cli(inspect_main, [str(out)], capsys, internal_errors)
    assert code == 0 and "2" in out_text, err


def test_train_data_is_an_empty_directory(tmp_path, capsys, internal_errors):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(train.main, [*BASE, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"),
                                    "--max-steps", "2"], capsys, internal_errors)
    refused(code, err, str(tmp_path / "empty"))
    assert not (tmp_path / "r").exists() and not any((tmp_path / "empty").iterdir())


# --- prepare ------------------------------------------------------------------------------------------


def test_prepare_out_equal_to_an_input_file(tmp_path, capsys, internal_errors):
    docs = text_dir(tmp_path / "docs")
    before = snapshot(docs)
    code, _, err = cli(prepare_main, ["--input", str(docs / "doc0.txt"), "--out", str(docs / "doc0.txt"), *PREPARE],
                       capsys, internal_errors)
    refused(code, err, "doc0.txt")
    assert snapshot(docs) == before


def test_prepare_overwrite_with_out_equal_to_the_input_directory(tmp_path, capsys, internal_errors):
    docs = text_dir(tmp_path / "docs")
    before = snapshot(docs)
    code, _, err = cli(prepare_main, ["--input", str(docs), "--out", str(docs), "--overwrite", *PREPARE], capsys,
                       internal_errors)
    refused(code, err, str(docs))
    assert snapshot(docs) == before


def test_prepare_the_same_input_twice_counts_it_once(tmp_path, capsys, internal_errors):
    """--input a.txt a.txt (or a directory and a file inside it) would put the same document in train
    and in val: a held-out loss measured on training text."""
    docs = text_dir(tmp_path / "docs")
    code, _, err = cli(prepare_main, ["--input", str(docs), str(docs / "doc1.txt"), "./" + os.path.relpath(
        docs / "doc2.txt"), "--out", str(tmp_path / "c"), *PREPARE], capsys, internal_errors)
    if code != 0:
        refused(code, err, "doc1.txt")
    else:
        assert json.loads((tmp_path / "c" / "meta.json").read_text())["input_files"] == 3


def test_prepare_whose_only_input_is_a_corpus(corpus, tmp_path, capsys, internal_errors):
    """Swapped arguments: --input names the corpus. Its files are skipped, so there is nothing to read."""
    before = snapshot(corpus)
    code, _, err = cli(prepare_main, ["--input", str(corpus), "--out", str(tmp_path / "c"), *PREPARE], capsys,
                       internal_errors)
    refused(code, err)
    assert snapshot(corpus) == before and output_kind(tmp_path / "c") is None


def test_prepare_overwrite_keeps_a_file_the_user_put_in_the_corpus(tmp_path, capsys, internal_errors):
    docs = text_dir(tmp_path / "docs")
    out = tmp_path / "c"
    assert cli(prepare_main, ["--input", str(docs), "--out", str(out), *PREPARE], capsys, internal_errors)[0] in (
        0, None)
    (out / "NOTES.md").write_text("which stdlib version this came from\n")
    code, _, err = cli(prepare_main, ["--input", str(docs), "--out", str(out), "--overwrite", *PREPARE], capsys,
                       internal_errors)
    if code not in (0, None):
        refused(code, err, "NOTES.md")
    assert (out / "NOTES.md").read_text() == "which stdlib version this came from\n"


def test_prepare_overwrite_never_replaces_an_export(tmp_path, capsys, internal_errors):
    docs = text_dir(tmp_path / "docs")
    export = tmp_path / "hf"
    export.mkdir()
    (export / ".grokcopy-export").write_text('{"kind": "export", "files": ["model.safetensors"]}')
    (export / "model.safetensors").write_bytes(b"weights")
    before = snapshot(export)
    code, _, err = cli(prepare_main, ["--input", str(docs), "--out", str(export), "--overwrite", *PREPARE], capsys,
                       internal_errors)
    refused(code, err, str(export))
    assert snapshot(export) == before


def test_ctrl_c_during_prepare_leaves_no_corpus_that_passes_as_complete(tmp_path, capsys, internal_errors,
                                                                        monkeypatch):
    import grokcopy.data.prepare as prep

    docs = text_dir(tmp_path / "docs")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_install", interrupted)
    code, _, err = cli(prepare_main, ["--input", str(docs), "--out", str(tmp_path / "c"), *PREPARE], capsys,
                       internal_errors)
    assert code == 130 and err.startswith("error: interrupted") and err.count("\n") == 1
    assert output_kind(tmp_path / "c") is None
    monkeypatch.undo()
    code, _, err = cli(train.main, [*BASE, "--data", str(tmp_path / "c"), "--out", str(tmp_path / "r"),
                                    "--max-steps", "2"], capsys, [])
    refused(code, err, "--data")
    code, _, err = cli(prepare_main, ["--input", str(docs), "--out", str(tmp_path / "c"), *PREPARE], capsys, [])
    assert code in (0, None), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "docs"]  # no build directory left behind


def test_ctrl_c_during_prepare_overwrite_keeps_the_old_corpus(tmp_path, capsys, internal_errors, monkeypatch):
    import grokcopy.data.prepare as prep

    docs = text_dir(tmp_path / "docs")
    out = tmp_path / "c"
    assert cli(prepare_main, ["--input", str(docs), "--out", str(out), *PREPARE], capsys, internal_errors)[0] in (
        0, None)
    before = snapshot(out)
    (docs / "doc9.txt").write_text("more " * 400)
    real = prep._encode

    def encode(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(prep, "_encode", encode)
    code, _, err = cli(prepare_main, ["--input", str(docs), "--out", str(out), "--overwrite", *PREPARE,
                                      "--shard-tokens", "1024", "--frame-tokens", "256"], capsys, internal_errors)
    assert code == 130 and err.count("\n") == 1
    assert snapshot(out) == before


def test_a_full_disk_during_prepare_is_one_line_and_leaves_nothing(tmp_path, capsys, internal_errors,
                                                                   monkeypatch):
    from grokcopy.data import atomic

    docs = text_dir(tmp_path / "docs")
    real_fdopen = atomic.os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k), 100))
    code, _, err = cli(prepare_main, ["--input", str(docs), "--out", str(tmp_path / "c"), *PREPARE], capsys,
                       internal_errors)
    refused(code, err, "No space left on device")
    assert not (tmp_path / "c").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["docs"]


def test_two_prepares_on_the_same_out_at_once(tmp_path):
    """Two terminals run the same prepare: each ends with status 0 or one error line, and the corpus
    left is whole (a trainer can open it)."""
    docs = text_dir(tmp_path / "docs", n=20)
    cmd = [sys.executable, "-m", "grokcopy.data.prepare", "--input", str(docs), "--out", str(tmp_path / "c"),
           *PREPARE]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [code for code, _ in results].count(0) >= 1, results
    for code, err in results:
        if code != 0:
            refused(code, err, "--out")
    from grokcopy.data.prepare import open_split

    assert len(open_split(tmp_path / "c", "train")) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "docs"]


# --- export -------------------------------------------------------------------------------------------


def test_export_into_the_corpus_is_refused(run, corpus, tmp_path, capsys, internal_errors):
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    before = snapshot(data)
    code, _, err = cli(hf_main(), ["export", str(run.path), str(data), "--overwrite"], capsys, internal_errors)
    refused(code, err, "a grokcopy corpus")
    assert snapshot(data) == before


def test_export_out_dir_a_symlink_to_the_run_is_refused(run, tmp_path, capsys, internal_errors):
    link = tmp_path / "hf"
    link.symlink_to(run.path)
    before = snapshot(run.path)
    code, _, err = cli(hf_main(), ["export", str(run.path), str(link), "--overwrite"], capsys, internal_errors)
    refused(code, err, str(link))
    assert snapshot(run.path) == before and link.is_symlink()


def test_export_arguments_swapped_is_refused(run, tmp_path, capsys, internal_errors):
    """export OUT RUN: the first argument does not exist yet, the second is the run."""
    before = snapshot(run.path)
    code, _, err = cli(hf_main(), ["export", str(tmp_path / "hf"), str(run.path), "--overwrite"], capsys,
                       internal_errors)
    refused(code, err, str(run.path))
    assert snapshot(run.path) == before


def test_export_while_a_trainer_holds_the_run(run, tmp_path, capsys, internal_errors):
    """A second terminal exports while training goes on: it reads, and leaves the lock and the run alone."""
    run.lock()
    try:
        before = snapshot(run.path)
        code, _, err = cli(hf_main(), ["export", str(run.path), str(tmp_path / "hf")], capsys, internal_errors)
        assert code == 0, err
        assert snapshot(run.path) == before and run.in_use()
    finally:
        run.unlock()


def test_a_full_disk_during_export_leaves_no_half_export(run, tmp_path, capsys, internal_errors, monkeypatch):
    import builtins

    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f, 10) if "w" in str(mode) and ".hf." in str(file) else f

    monkeypatch.setattr(builtins, "open", full_open)
    real_write_bytes = Path.write_bytes
    real_write_text = Path.write_text

    def full(self, *args, **kwargs):
        if ".hf." in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return (real_write_text if isinstance(args[0], str) else real_write_bytes)(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", full)
    monkeypatch.setattr(Path, "write_text", full)
    code, _, err = cli(hf_main(), ["export", str(run.path), str(tmp_path / "hf")], capsys, internal_errors)
    refused(code, err, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("what", ["corpus", "empty", "file"])
def test_export_from_something_that_is_not_a_run(corpus, tmp_path, capsys, internal_errors, what):
    source = {"corpus": corpus, "empty": tmp_path / "empty", "file": tmp_path / "notes.txt"}[what]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("notes\n")
    code, _, err = cli(hf_main(), ["export", str(source), str(tmp_path / "hf")], capsys, internal_errors)
    refused(code, err, str(source))
    assert not (tmp_path / "hf").exists()


# --- sample and inspect ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sample", "inspect"])
@pytest.mark.parametrize("what", ["corpus", "empty"])
def test_sample_and_inspect_on_something_that_is_not_a_run(corpus, tmp_path, capsys, internal_errors, command,
                                                           what):
    source = corpus if what == "corpus" else tmp_path / "empty"
    (tmp_path / "empty").mkdir()
    before = snapshot(source)
    main = sample_main if command == "sample" else inspect_main
    code, _, err = cli(main, [str(source)], capsys, internal_errors)
    refused(code, err, str(source))
    assert snapshot(source) == before


def test_sample_and_inspect_while_a_trainer_holds_the_run(run, capsys, internal_errors):
    run.lock()
    try:
        before = snapshot(run.path)
        code, _, err = cli(sample_main, [str(run.path), "--max-new-tokens", "4"], capsys, internal_errors)
        assert code == 0, err
        code, _, err = cli(inspect_main, [str(run.path)], capsys, internal_errors)
        assert code == 0, err
        assert snapshot(run.path) == before and run.in_use()
    finally:
        run.unlock()


def test_sample_of_a_run_whose_corpus_was_deleted_is_one_line(run, corpus, tmp_path, capsys, internal_errors):
    """A BPE run's tokenizer lives in its corpus (a bytes run needs none): the corpus deleted, sampling
    names where the tokenizer was."""
    config = json.loads(run.config_path.read_text())
    config["data_dir"] = str(tmp_path / "gone")
    config["data_meta"]["tokenizer"] = {"kind": "bpe", "file": "tokenizer.json", "eot_id": 0}
    run.config_path.write_text(json.dumps(config))
    code, _, err = cli(sample_main, [str(run.path)], capsys, internal_errors)
    refused(code, err, "gone")


# --- report -----------------------------------------------------------------------------------------------


def test_report_out_equal_to_a_run_is_refused(run, capsys, internal_errors):
    before = snapshot(run.path)
    code, _, err = cli(report_main, [str(run.path), "--out", str(run.path)], capsys, internal_errors)
    refused(code, err, "--out")
    assert snapshot(run.path) == before


def test_report_out_over_a_users_report_is_refused(run, tmp_path, capsys, internal_errors):
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "report.md").write_text("# my hand-written report\n")
    before = snapshot(mine)
    code, _, err = cli(report_main, [str(run.path), "--out", str(mine)], capsys, internal_errors)
    refused(code, err, "--out")
    assert snapshot(mine) == before


def test_report_with_the_same_run_twice_counts_it_once(run, tmp_path, capsys, internal_errors, monkeypatch):
    """`report RUN RUN` or RUN and a symlink to it: a seed spread of one run counted twice is a silent
    wrong number."""
    (tmp_path / "alias").symlink_to(run.path)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(report_main, [str(run.path), "alias", "--out", str(tmp_path / "rep")], capsys,
                       internal_errors)
    if code != 0:
        refused(code, err, "alias")
    else:
        text = (tmp_path / "rep" / "report.md").read_text()
        assert text.count("### ") == 1, text


def test_report_on_a_corpus_is_one_line(corpus, tmp_path, capsys, internal_errors):
    code, _, err = cli(report_main, [str(corpus), "--out", str(tmp_path / "rep")], capsys, internal_errors)
    refused(code, err, str(corpus))


# --- experiment ---------------------------------------------------------------------------------------------


def test_experiment_out_a_run_directory_is_refused(run, capsys, internal_errors, monkeypatch):
    """--out RUN (a single run, not a grid root): links and runs/ would be written inside the run."""
    import grokcopy.evals.experiment as experiment

    monkeypatch.setattr(experiment, "run_all", lambda todo, jobs, logs: 0)  # the point is what it writes first
    before, names = snapshot(run.path), sorted(p.name for p in run.path.iterdir())
    code, _, err = cli(experiment.main, ["baseline", "--out", str(run.path), "--max-steps", "2"], capsys,
                       internal_errors)
    refused(code, err, "--out")
    assert snapshot(run.path) == before and sorted(p.name for p in run.path.iterdir()) == names


# --- the same directory written another way -------------------------------------------------------------


def test_train_out_a_symlink_to_the_corpus_is_refused(corpus, tmp_path, capsys, internal_errors):
    (tmp_path / "latest").symlink_to(corpus)
    before = snapshot(corpus)
    code, _, err = cli(train.main, [*BASE, "--data", str(corpus), "--out", str(tmp_path / "latest"),
                                    "--max-steps", "2"], capsys, internal_errors)
    refused(code, err, "a grokcopy corpus")
    assert snapshot(corpus) == before


def test_export_over_the_run_written_another_way_is_refused(run, capsys, internal_errors, monkeypatch):
    monkeypatch.chdir(run.checkpoints_dir)
    before = snapshot(run.path)
    code, _, err = cli(hf_main(), ["export", str(run.path), "../../run/", "--overwrite"], capsys, internal_errors)
    refused(code, err, "never replaces its own input")
    assert snapshot(run.path) == before


def test_prepare_out_the_input_written_relatively(tmp_path, capsys, internal_errors, monkeypatch):
    docs = text_dir(tmp_path / "docs")
    before = snapshot(docs)
    monkeypatch.chdir(docs)
    code, _, err = cli(prepare_main, ["--input", str(docs), "--out", "./", "--overwrite", *PREPARE], capsys,
                       internal_errors)
    refused(code, err, "--out")
    assert snapshot(docs) == before


def test_inspect_on_a_checkpoint_file_reads_its_run_or_says_so(run, capsys, internal_errors):
    before = snapshot(run.path)
    code, out, err = cli(inspect_main, [str(run.checkpoint_path(4))], capsys, internal_errors)
    if code != 0:
        refused(code, err, "step-00000004.pt")
    assert snapshot(run.path) == before
