"""`data.prepare --out`: never deletes what grokcopy did not write, replaces a corpus only with
--overwrite and then atomically, and concurrent preparations of the default corpus build it once."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from grokcopy.data import TokenDataset
from grokcopy.data.corpus import open_corpus
from grokcopy.data.prepare import main

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"document {i}\n" + "token " * (i * 5) for i in range(8)]


@pytest.fixture
def inputs(tmp_path) -> list[str]:
    root = tmp_path / "in"
    root.mkdir()
    for i, t in enumerate(TEXTS):
        (root / f"{i}.txt").write_text(t)
    return [str(root)]


def prepare_args(inputs, out, *extra) -> list[str]:
    return ["--input", *inputs, "--out", str(out), "--bytes", "--val-fraction", "0.25", "--quiet", *extra]


def run_error(capsys, argv, code=2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    return err.strip().splitlines()[-1]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its content, to compare before and after."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_directory_that_is_not_a_corpus_is_refused_and_kept(tmp_path, inputs, capsys):
    """It used to be deleted (shutil.rmtree on any --out without meta.json)."""
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    (home / "notes.txt").write_text("my notes")
    (home / "projects" / "thesis.tex").write_text("\\begin{document}")
    before = tree(home)
    for extra in ([], ["--overwrite"]):
        err = run_error(capsys, prepare_args(inputs, home, *extra))
        assert f"--out {home} is not empty and not a grokcopy corpus" in err and "notes.txt" in err
        assert tree(home) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "in"], "no build directory left beside it"


def test_a_corpus_with_a_file_of_the_users_is_not_overwritten(tmp_path, inputs, capsys):
    out = tmp_path / "corpus"
    main(prepare_args(inputs, out))
    (out / "README.md").write_text("how I made this corpus")
    (out / "train" / "my-extra.tok").write_bytes(b"not ours")
    before = tree(out)
    err = run_error(capsys, prepare_args(inputs, out, "--overwrite"))
    assert "README.md" in err and "my-extra.tok" in err
    assert tree(out) == before


def test_an_existing_corpus_needs_overwrite_and_is_swapped_whole(tmp_path, inputs, capsys):
    out = tmp_path / "corpus"
    main(prepare_args(inputs, out))
    old = tree(out)
    err = run_error(capsys, prepare_args(inputs, out, "--seed", "3"))
    assert "already holds a prepared corpus; pass --overwrite" in err
    assert tree(out) == old
    reader = TokenDataset(out / "train")  # a trainer reading the old corpus while it is replaced
    old_tokens = reader[:]
    main(prepare_args(inputs, out, "--seed", "3", "--overwrite"))
    assert tree(out) != old and json.loads((out / "meta.json").read_text())["seed"] == 3
    np.testing.assert_array_equal(reader[:], old_tokens)  # its open shards stay readable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "in"], "the old corpus and build dir are gone"


def test_empty_directory_and_symlink_outs(tmp_path, inputs, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    main(prepare_args(inputs, empty))
    assert open_corpus(empty).meta["splits"]["train"]["documents"] == 6
    target = tmp_path / "data" / "corpus"
    target.parent.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    main(prepare_args(inputs, link))
    main(prepare_args(inputs, link, "--overwrite", "--seed", "1"))
    assert link.is_symlink() and open_corpus(target).meta["seed"] == 1


def test_an_out_that_is_a_file_is_refused(tmp_path, inputs, capsys):
    (tmp_path / "file").write_text("keep me")
    err = run_error(capsys, prepare_args(inputs, tmp_path / "file", "--overwrite"))
    assert "is a file, not a directory" in err
    assert (tmp_path / "file").read_text() == "keep me"


def test_a_failure_midway_leaves_the_old_corpus_and_nothing_else(tmp_path, inputs, capsys, monkeypatch):
    out = tmp_path / "corpus"
    main(prepare_args(inputs, out))
    old = tree(out)
    import grokcopy.data.prepare

    def broken_meta(*args):
        raise OSError(28, "No space left on device", str(out / "meta.json"))

    monkeypatch.setattr(grokcopy.data.prepare, "write_meta", broken_meta)
    err = run_error(capsys, prepare_args(inputs, out, "--overwrite"), code=1)
    assert "No space left on device" in err and "the disk is full" in err
    assert tree(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "in"]


# ---------------------------------------------------------------------------------------------
# Concurrent preparation of the default corpus

CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import grokcopy.data.prepare as prepare

    log, go = Path(sys.argv[1]), Path(sys.argv[2])
    real_sources = prepare.default_sources

    def few_sources():
        # stands in for the stdlib (seconds to tokenise): a few files, and a pause that keeps the
        # preparation going while the other processes arrive
        with open(log, "a") as f:
            f.write(f"prepare {os.getpid()}\\n")
        time.sleep(1.5)
        sources = real_sources()
        sources.files = sources.files[:20]
        return sources

    prepare.default_sources = few_sources
    while not go.exists():
        time.sleep(0.01)
    corpus = prepare.ensure_default_corpus(bytes_level=True, progress=False)
    from grokcopy.data import open_corpus
    print("corpus", corpus, len(open_corpus(corpus).train))
""")


def test_concurrent_trainers_prepare_the_default_corpus_once(tmp_path):
    """Four processes start together on a missing default corpus: one prepares, three wait, all use it.
    (Without the lock, each one prepared and replaced the directory the others were reading.)"""
    log, go = tmp_path / "prepared.log", tmp_path / "go"
    env = {**os.environ, "GROKCOPY_DATA": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(log), str(go)], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.0)  # let all four import and reach the start line
    go.touch()
    results = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), results
    assert log.read_text().count("prepare") == 1, log.read_text()
    answers = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(answers) == 1, answers
    assert sum("waiting for another process" in err for _, err in results) >= 1
    cache = tmp_path / "cache"
    assert [p.name for p in cache.iterdir()] == [f"stdlib-py{sys.version_info.major}{sys.version_info.minor}-bytes"]
