"""A prepared corpus checked before training (`data.open_corpus`), the sampler's too-small error,
and `data.prepare`'s one-line errors for the mistakes a person makes."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from grokcopy.data import CorpusError, CorpusTooSmallError, WindowSampler, open_corpus
from grokcopy.data.corpus import meta_checksum
from grokcopy.data.prepare import main

ROOT = Path(__file__).resolve().parents[1]
# enough varied text for a 300-token BPE: a standard-library module in 8 documents
_SOURCE = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
TEXTS = [_SOURCE[i * len(_SOURCE) // 8 : (i + 1) * len(_SOURCE) // 8] for i in range(8)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two small corpora of different vocabularies: bytes (257) and a BPE (300)."""
    root = tmp_path_factory.mktemp("corpora")
    (root / "in").mkdir()
    for i, t in enumerate(TEXTS):
        (root / "in" / f"{i}.txt").write_text(t)
    for name, flags in (("bytes", ["--bytes"]), ("bpe", ["--vocab-size", "300"])):
        main(["--input", str(root / "in"), "--out", str(root / name), "--val-fraction", "0.25", "--quiet", *flags])
    return root


@pytest.fixture
def corpus(corpora, tmp_path):
    """A fresh copy of the BPE corpus to damage."""
    shutil.copytree(corpora / "bpe", tmp_path / "c")
    return tmp_path / "c"


def edit_meta(corpus: Path, keep_checksum: bool = False, **changes) -> None:
    meta = json.loads((corpus / "meta.json").read_text())
    meta.update(changes)
    if not keep_checksum:
        meta.pop("checksum")  # a deliberate edit: the line deleted, as the error message says
    (corpus / "meta.json").write_text(json.dumps(meta))


def test_a_good_corpus_opens(corpus):
    meta, train, val = open_corpus(corpus)
    assert train.vocab_size == val.vocab_size == meta["vocab_size"] == 300
    assert len(train) == meta["splits"]["train"]["tokens"] and meta["checksum"] == meta_checksum(meta)


def test_meta_vocab_size_that_the_shards_contradict(corpus):
    """This used to end in an IndexError in the embedding, mid-training."""
    edit_meta(corpus, vocab_size=257)
    with pytest.raises(CorpusError, match=r"meta.json says vocab_size 257, but the shards in .*train say 300"):
        open_corpus(corpus)


def test_shards_of_another_corpus(corpus, corpora):
    for f in (corpus / "train").glob("*.tok"):
        f.unlink()
    shutil.copy(next((corpora / "bytes" / "train").glob("*.tok")), corpus / "train")
    with pytest.raises(CorpusError, match="vocab_size 300, but the shards"):
        open_corpus(corpus)


def test_token_count_that_the_shards_contradict(corpus):
    meta = json.loads((corpus / "meta.json").read_text())
    edit_meta(corpus, splits={**meta["splits"], "train": {"documents": 6, "tokens": 5}})
    with pytest.raises(CorpusError, match="records 5 train tokens, but the shards"):
        open_corpus(corpus)


def test_an_edit_without_removing_the_checksum(corpus):
    edit_meta(corpus, keep_checksum=True, source="renamed by hand")
    with pytest.raises(CorpusError, match="checksum mismatch.*delete the \"checksum\" line"):
        open_corpus(corpus)


def test_a_meta_json_from_before_checksums_is_accepted(corpus):
    """Corpora prepared before checksums existed (the default corpus in a cache) still open."""
    meta = json.loads((corpus / "meta.json").read_text())
    legacy = {k: meta[k] for k in ("format_version", "source", "input_files", "skipped_binary_files", "vocab_size",
                                   "val_fraction", "seed", "splits", "text_bytes")}
    legacy["tokenizer"] = {k: meta["tokenizer"][k] for k in ("kind", "file", "eot_id")}
    (corpus / "meta.json").write_text(json.dumps(legacy))
    assert open_corpus(corpus).meta == legacy


@pytest.mark.parametrize("damage, message", [
    (lambda c: shutil.rmtree(c / "val"), r"val: missing or without \*.tok shards"),
    (lambda c: (c / "meta.json").unlink(), "not a prepared corpus"),
    (lambda c: (c / "meta.json").write_text('{"format_version": 1, "vocab'), "not valid JSON"),
    (lambda c: (c / "meta.json").write_text("[1, 2]"), "not an object"),
    (lambda c: (c / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    (lambda c: (c / "tokenizer.json").write_text("{}"), "tokenizer.json: checksum mismatch"),
    (lambda c: edit_meta(c, vocab="300"), r"unknown keys \['vocab'\]"),
    (lambda c: edit_meta(c, vocab_size="300"), "vocab_size '300' is not a positive integer"),
    (lambda c: edit_meta(c, tokenizer={"kind": "bpe", "file": "tokenizer.json", "eot_id": 300}), "eot_id 300"),
])
def test_damaged_corpora_are_named(corpus, damage, message):
    damage(corpus)
    with pytest.raises(CorpusError, match=message) as error:
        open_corpus(corpus)
    assert str(corpus) in str(error.value)


def test_a_corpus_without_val(tmp_path, corpora):
    main(["--input", str(corpora / "in"), "--out", str(tmp_path / "c"), "--bytes", "--val-fraction", "0", "--quiet"])
    with pytest.raises(CorpusError, match="no val split.*--val-fraction 0"):
        open_corpus(tmp_path / "c")
    assert open_corpus(tmp_path / "c", require_val=False).val is None


def test_a_corpus_too_small_for_one_window(corpora):
    train = open_corpus(corpora / "bytes").train
    window = len(train) // 2  # two ranks need 3 windows' worth (room for the random offset)
    with pytest.raises(CorpusTooSmallError) as error:
        WindowSampler(train, window, seed=0, world_size=2)
    message = str(error.value)
    assert str(corpora / "bytes" / "train") in message and f"holds {len(train):,} tokens" in message
    assert f"seq_len {window - 1:,}" in message and f"needs {3 * window - 1:,}" in message and "--seq-len" in message
    assert isinstance(error.value, ValueError)  # what callers caught before
    WindowSampler(train, window, seed=0, world_size=1)  # one rank fits


# ---------------------------------------------------------------------------------------------
# One `error:` line for every mistake, exit 2 for usage and 1 for runtime, never a traceback


def make_bad_jsonl(root: Path) -> str:
    (root / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "fine too"}\n{"text": "\xff"}\n')
    return str(root / "bad.jsonl")


MISTAKES = {
    "frame-tokens 0": (["--frame-tokens", "0"], "--frame-tokens 0"),
    "frame-tokens huge": (["--frame-tokens", str(1 << 30)], "--frame-tokens 1073741824"),
    "shard-tokens 0": (["--shard-tokens", "0"], "--shard-tokens 0"),
    "level 99": (["--level", "99"], "--level 99: zstd levels run from 1 to 22"),
    "level 0": (["--level", "0"], "--level 0"),
    "seed -1": (["--seed", "-1"], "--seed -1"),
    "seed not a number": (["--seed", "abc"], "argument --seed: invalid int value"),
    "val-fraction 1": (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    "val-fraction nan": (["--val-fraction", "nan"], "--val-fraction must be in [0, 1)"),
    "text-field empty": (["--text-field", ""], "--text-field"),
    "eot-token without tokenizer": (["--eot-token", "</s>"], "--eot-token"),
    "abbreviated flag": (["--vocab", "3"], "unrecognized arguments: --vocab 3"),  # not taken as --vocab-size
}


@pytest.mark.parametrize("name", MISTAKES)
def test_flag_mistakes_are_one_error_line(tmp_path, capsys, corpora, name):
    flags, message = MISTAKES[name]
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(corpora / "in"), "--out", str(tmp_path / "o"), "--bytes", "--quiet", *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_input_mistakes_are_one_error_line(tmp_path, capsys, corpora):
    cases = [
        (["--input", make_bad_jsonl(tmp_path)], "bad.jsonl:3: invalid UTF-8"),
        (["--input", str(tmp_path / "nope")], "--input"),
        (["--input", str(corpora / "in"), "--out", str(corpora / "in" / "0.txt")], "is a file"),
    ]
    for flags, message in cases:
        argv = [*flags, "--bytes", "--quiet"] + ([] if "--out" in flags else ["--out", str(tmp_path / "o")])
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_a_read_only_out(tmp_path, capsys, corpora, read_only_dir):
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(corpora / "in"), "--out", str(read_only_dir / "corpus"), "--bytes", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "cannot write in" in err, err


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only directory: a read-only tmpfs where this machine may mount one (as root, chmod does
    not stop writes), else a chmod 555 directory for a user who is not root."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root, where only a read-only mount makes a directory read-only, and mount "
                    f"failed: {mounted.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_debug_shows_the_traceback(tmp_path, monkeypatch, corpora):
    from grokcopy.data import PrepareError

    monkeypatch.setenv("GROKCOPY_DEBUG", "1")
    with pytest.raises(PrepareError, match="--level 99"):
        main(["--input", str(corpora / "in"), "--out", str(tmp_path / "o"), "--bytes", "--level", "99"])


def test_the_command_line_itself(tmp_path, corpora):
    """Through `python -m grokcopy.data.prepare`: the exit status and the one line, in a real process."""
    result = subprocess.run([sys.executable, "-m", "grokcopy.data.prepare", "--input", str(corpora / "in"), "--out",
                             str(tmp_path / "o"), "--bytes", "--seed", "-1"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr == "error: --seed -1: must be an integer >= 0\n"

