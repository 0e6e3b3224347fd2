"""`data.prepare` inputs: corpora as published (parquet, .gz, --text-field), raw bytes stored as they
are, binary files, and flags that used to be ignored without a word."""

import gzip
import json

import numpy as np
import pytest
import zstandard

from grokcopy.data.corpus import open_corpus
from grokcopy.data.prepare import main
from grokcopy.data.sources import collect_sources, iter_pieces

TEXTS = [f"doc {i}: caf\u00e9 \u2116{i}\n" + "word " * (i * 7) + "\nend\n" for i in range(10)]


def run_ok(capsys, argv) -> tuple[str, str]:
    main([*argv, "--quiet"])
    captured = capsys.readouterr()
    return captured.out, captured.err


def run_error(capsys, argv, code=2) -> str:
    """The `error:` line of a failing run: exactly one, the last thing printed, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert "Traceback" not in err
    return lines[-1]


def corpus_documents(out) -> list[bytes]:
    """Every document of both splits as raw bytes (a --bytes corpus), sorted."""
    corpus = open_corpus(out, require_val=False)
    docs = []
    for ds in (corpus.train, corpus.val):
        if ds is None:
            continue
        tokens = ds[:]
        cuts = np.flatnonzero(tokens == corpus.meta["tokenizer"]["eot_id"])
        docs += [bytes(d[:-1].astype(np.uint8).tolist()) for d in np.split(tokens, cuts + 1)[:-1]]
    return sorted(docs)


def expected(texts) -> list[bytes]:
    return sorted(t.encode() for t in texts if t)


# ---------------------------------------------------------------------------------------------
# Corpora as published


def write_parquet(path, texts, column="text", row_group_size=3, **extra_columns):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({column: texts, **extra_columns})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.mark.parametrize("name, write", [
    ("docs.jsonl.gz", lambda p, lines: p.write_bytes(gzip.compress(lines))),
    ("docs.json.gz", lambda p, lines: p.write_bytes(gzip.compress(lines))),  # Dolma's layout
    ("docs.json.zst", lambda p, lines: p.write_bytes(zstandard.ZstdCompressor().compress(lines))),
    # a .zst of several frames, as pzstd and streaming writers make
    ("docs.jsonl.zst", lambda p, lines: p.write_bytes(
        b"".join(zstandard.ZstdCompressor().compress(lines[i : i + 50]) for i in range(0, len(lines), 50)))),
])
def test_compressed_json_lines(tmp_path, capsys, name, write):
    lines = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)).encode()
    write(tmp_path / name, lines)
    run_ok(capsys, ["--input", str(tmp_path / name), "--out", str(tmp_path / "o"), "--bytes", "--val-fraction", "0.2"])
    assert corpus_documents(tmp_path / "o") == expected(TEXTS)


@pytest.mark.parametrize("name, compress", [("a.txt.gz", gzip.compress),
                                            ("a.txt.zst", zstandard.ZstdCompressor().compress)])
def test_compressed_text_files(tmp_path, capsys, name, compress):
    (tmp_path / "in").mkdir()
    for i, t in enumerate(TEXTS[:4]):
        (tmp_path / "in" / f"{i}-{name}").write_bytes(compress(t.encode()))
    run_ok(capsys, ["--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--bytes", "--val-fraction", "0.25"])
    assert corpus_documents(tmp_path / "o") == expected(TEXTS[:4])


def test_parquet_with_another_text_field_round_trips(tmp_path, capsys):
    write_parquet(tmp_path / "stack.parquet", TEXTS, column="content", row_group_size=3, id=list(range(len(TEXTS))))
    run_ok(capsys, ["--input", str(tmp_path / "stack.parquet"), "--out", str(tmp_path / "o"), "--bytes",
                    "--text-field", "content", "--val-fraction", "0.2"])
    assert corpus_documents(tmp_path / "o") == expected(TEXTS)
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["text_field"] == "content"
    # and with a BPE
    run_ok(capsys, ["--input", str(tmp_path / "stack.parquet"), "--out", str(tmp_path / "b"), "--vocab-size", "300",
                    "--text-field", "content"])
    assert open_corpus(tmp_path / "b").meta["splits"]["train"]["documents"] == 9


def test_parquet_is_read_one_row_group_at_a_time(tmp_path, monkeypatch):
    """Never the whole file: only iter_batches over a single row group, never read()/read_row_groups."""
    pq = pytest.importorskip("pyarrow.parquet")
    write_parquet(tmp_path / "a.parquet", TEXTS, row_group_size=4)
    calls = []
    real_iter_batches = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("row_groups"))
        return real_iter_batches(self, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the whole file was read at once")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", forbidden)
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", forbidden)
    pieces = list(iter_pieces([tmp_path / "a.parquet"], raw=True))
    assert b"".join(p for p, _ in pieces) == "".join(TEXTS).encode()
    assert calls == [[0], [1], [2]]


def test_parquet_errors_name_the_file_and_row(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    write_parquet(tmp_path / "nulls.parquet", ["a", "b", "c", None, "e"], row_group_size=2)
    err = run_error(capsys, ["--input", str(tmp_path / "nulls.parquet"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "nulls.parquet: row 3" in err and "null" in err
    write_parquet(tmp_path / "content.parquet", ["a", "b"], column="content")
    err = run_error(capsys, ["--input", str(tmp_path / "content.parquet"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "content.parquet: no column 'text'" in err and "'content'" in err and "--text-field" in err
    write_parquet(tmp_path / "ints.parquet", pa.array([1, 2]))
    err = run_error(capsys, ["--input", str(tmp_path / "ints.parquet"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "ints.parquet: column 'text' holds int64, not strings" in err
    whole = (tmp_path / "nulls.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    err = run_error(capsys, ["--input", str(tmp_path / "cut.parquet"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "cut.parquet: not a readable parquet file" in err
    assert not (tmp_path / "o").exists()


def test_text_field_for_json_lines(tmp_path, capsys):
    lines = "".join(json.dumps({"content": t, "lang": "py"}) + "\n" for t in TEXTS)
    (tmp_path / "stack.jsonl").write_text(lines)
    err = run_error(capsys, ["--input", str(tmp_path / "stack.jsonl"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "stack.jsonl:1: expected an object with a string field 'text'" in err
    assert "['content', 'lang']" in err and "--text-field" in err
    run_ok(capsys, ["--input", str(tmp_path / "stack.jsonl"), "--out", str(tmp_path / "o"), "--bytes",
                    "--text-field", "content", "--val-fraction", "0.2"])
    assert corpus_documents(tmp_path / "o") == expected(TEXTS)


@pytest.mark.parametrize("name", ["docs.jsonl.gz", "docs.jsonl.zst", "docs.txt.gz", "docs.txt.zst"])
def test_truncated_compressed_input_is_an_error_naming_the_file(tmp_path, capsys, name):
    lines = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 50).encode()
    data = gzip.compress(lines) if name.endswith(".gz") else zstandard.ZstdCompressor().compress(lines)
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    err = run_error(capsys, ["--input", str(tmp_path / name), "--out", str(tmp_path / "o"), "--bytes",
                             "--val-fraction", "0"])
    assert name in err and ("truncated" in err or "cannot decompress" in err)
    assert not (tmp_path / "o").exists()


def test_invalid_utf8_in_json_lines_names_file_and_line(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    err = run_error(capsys, ["--input", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "bad.jsonl:2: invalid UTF-8" in err
    (tmp_path / "surrogate.jsonl").write_text('{"text": "ok"}\n{"text": "a\\ud800b"}\n')
    err = run_error(capsys, ["--input", str(tmp_path / "surrogate.jsonl"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "surrogate.jsonl:2" in err and "surrogate" in err


# ---------------------------------------------------------------------------------------------
# What used to pass without a word


RAW = b"caf\xe9 \xff\xfe latin-1 and broken\r\nwindows line\rold mac line\n\xe2\x82"  # ends mid-character


def test_raw_bytes_are_stored_as_they_are(tmp_path, capsys):
    """--bytes keeps undecodable bytes and CRs (they used to become U+FFFD and LF, uncounted)."""
    (tmp_path / "a.txt").write_bytes(RAW)
    (tmp_path / "b.txt").write_bytes(b"plain\n")
    run_ok(capsys, ["--input", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(tmp_path / "o"),
                    "--bytes", "--val-fraction", "0.5"])
    assert corpus_documents(tmp_path / "o") == sorted([RAW, b"plain\n"])
    meta = open_corpus(tmp_path / "o").meta
    assert meta["replaced_bytes"] == 0 and meta["text_bytes"] == len(RAW) + 6


def test_undecodable_bytes_are_counted_for_a_bpe(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(RAW)
    (tmp_path / "b.txt").write_bytes(b"plain\n")
    _, err = run_ok(capsys, ["--input", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out",
                             str(tmp_path / "o"), "--vocab-size", "300", "--val-fraction", "0.5"])
    # \xe9, \xff, \xfe, and the incomplete \xe2\x82 at the end of the file (one replacement, 2 bytes)
    assert "5 bytes that are not UTF-8, in 1 files" in err and "a.txt" in err
    assert open_corpus(tmp_path / "o").meta["replaced_bytes"] == 5


@pytest.mark.parametrize("named_directly", [True, False])
def test_binary_files_are_skipped_by_name_either_way(tmp_path, capsys, named_directly):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    (tmp_path / "in" / "b.txt").write_text("world\n")
    inputs = [str(tmp_path / "in" / n) for n in ("image.png", "a.txt", "b.txt")] if named_directly \
        else [str(tmp_path / "in")]
    _, err = run_ok(capsys, ["--input", *inputs, "--out", str(tmp_path / "o"), "--bytes", "--val-fraction", "0.5"])
    assert "skipped 1 files that look binary" in err and "image.png" in err
    meta = open_corpus(tmp_path / "o").meta
    assert meta["skipped_binary_files"] == 1 and meta["skipped_files"][0].endswith("image.png")
    assert corpus_documents(tmp_path / "o") == [b"hello\n", b"world\n"]
    assert collect_sources(inputs).skipped == [tmp_path / "in" / "image.png"]


def test_vocab_size_flags_that_were_ignored(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("abc abc abd\n" * 20)
    (tmp_path / "b.txt").write_text("abd abc\n")
    args = ["--input", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(tmp_path / "o")]
    err = run_error(capsys, [*args, "--bytes", "--vocab-size", "300"])
    assert "--vocab-size 300 does not apply to --bytes" in err
    err = run_error(capsys, [*args, "--vocab-size", "0"])
    assert "--vocab-size 0" in err
    err = run_error(capsys, [*args, "--vocab-size", "-5"])
    assert "--vocab-size -5" in err
    assert not (tmp_path / "o").exists()
    run_ok(capsys, [*args, "--bytes", "--vocab-size", "257"])  # the one size that does apply


def test_vocab_larger_than_the_text_supports_is_said_and_recorded(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("abc abc abd\n" * 20)
    (tmp_path / "b.txt").write_text("abd abc\n")
    out, err = run_ok(capsys, ["--input", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"),
                               "--out", str(tmp_path / "o"), "--vocab-size", "2000"])
    meta = open_corpus(tmp_path / "o").meta
    assert 257 <= meta["vocab_size"] < 2000 and meta["requested_vocab_size"] == 2000
    assert f"supports only {meta['vocab_size']} tokens" in err and "--vocab-size 2000" in err
    assert "of --vocab-size 2000 asked for" in out
