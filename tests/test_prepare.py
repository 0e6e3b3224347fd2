"""`python -m grokcopy.data.prepare`: every input kind with every tokenizer mode, and clear input errors."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import zstandard

from grokcopy.data.prepare import default_sources, main, open_split

TEXTS = [f"def function_{i}(x):\n    return x * {i} + {i * i}  # café №{i}\n" * (i + 1) for i in range(12)]


def make_inputs(root: Path, kind: str) -> list[str]:
    """The same 12 documents as one input kind; returns the --input arguments."""
    root.mkdir(parents=True)
    if kind == "files":  # any extension, given one by one
        paths = []
        for i, t in enumerate(TEXTS):
            (root / f"doc{i:02d}.{['py', 'txt', 'weird'][i % 3]}").write_text(t)
            paths.append(str(root / f"doc{i:02d}.{['py', 'txt', 'weird'][i % 3]}"))
        return paths
    if kind == "directory":  # recursive; a binary file is skipped
        for i, t in enumerate(TEXTS):
            sub = root / f"pkg{i % 3}" / "inner"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"m{i:02d}.py").write_text(t)
        (root / "image.bin").write_bytes(b"\x89PNG\x00\x01\x02")
        return [str(root)]
    lines = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)) + "\n"
    if kind == "jsonl":
        (root / "docs.jsonl").write_text(lines)
        return [str(root / "docs.jsonl")]
    (root / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    return [str(root / "docs.jsonl.zst")]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A small BPE tokenizer.json made by prepare itself, standing in for e.g. a Llama tokenizer."""
    root = tmp_path_factory.mktemp("tok")
    args = make_inputs(root / "in", "jsonl")
    main(["--input", *args, "--out", str(root / "out"), "--vocab-size", "300", "--quiet"])
    return root / "out" / "tokenizer.json"


def decode(corpus: Path, tokens: np.ndarray, meta: dict) -> str:
    if meta["tokenizer"]["kind"] == "bytes":
        return bytes(tokens.astype(np.uint8).tolist()).decode()
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(corpus / "tokenizer.json")).decode(tokens.tolist())


@pytest.mark.parametrize("kind", ["files", "directory", "jsonl", "jsonl.zst"])
@pytest.mark.parametrize("mode", ["bytes", "bpe", "tokenizer"])
def test_prepare_round_trips_every_document(tmp_path, kind, mode, tokenizer_file, capsys):
    args = make_inputs(tmp_path / "in", kind)
    out = tmp_path / "corpus"
    mode_args = {
        "bytes": ["--bytes"], "bpe": ["--vocab-size", "320"], "tokenizer": ["--tokenizer", str(tokenizer_file)]
    }
    main(["--input", *args, "--out", str(out), "--val-fraction", "0.25", *mode_args[mode], "--quiet"])
    report = capsys.readouterr().out
    for word in ("documents: 12", "tokens: train", "on disk:", "compression", "seconds:"):
        assert word in report

    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["val"]["documents"] == 3 and meta["splits"]["train"]["documents"] == 9
    eot = meta["tokenizer"]["eot_id"]
    decoded = []
    for split in ("train", "val"):
        ds = open_split(out, split)
        assert ds.vocab_size == meta["vocab_size"] and len(ds) == meta["splits"][split]["tokens"]
        tokens = ds[:]
        assert tokens[-1] == eot
        cuts = np.flatnonzero(tokens == eot)
        docs = np.split(tokens, cuts + 1)[:-1]
        decoded += [decode(out, d[:-1], meta) for d in docs]
    assert sorted(decoded) == sorted(TEXTS), "every document must come back exactly, in one split"


def test_split_is_deterministic_and_seeded(tmp_path):
    args = make_inputs(tmp_path / "in", "jsonl")
    vals = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "5")):
        main(["--input", *args, "--out", str(tmp_path / name), "--bytes", "--seed", seed, "--quiet"
              , "--val-fraction", "0.3"])
        vals.append(open_split(tmp_path / name, "val")[:].tobytes())
    assert vals[0] == vals[1] != vals[2]


def run_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_missing_input_path_is_named(tmp_path, capsys):
    err = run_error(capsys, ["--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "--input" in err and "missing.txt" in err and "no such file" in err


def test_empty_inputs_are_errors(tmp_path, capsys):
    (tmp_path / "empty_dir").mkdir()
    err = run_error(capsys, ["--input", str(tmp_path / "empty_dir"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "no files" in err
    (tmp_path / "blank.txt").write_text("")
    err = run_error(capsys, ["--input", str(tmp_path / "blank.txt"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "hold no text" in err
    assert not (tmp_path / "o").exists()


def test_bad_jsonl_names_file_and_line(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    err = run_error(capsys, ["--input", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o"), "--bytes"])
    assert "bad.jsonl:2" in err and "'text'" in err


def test_tokenizer_that_does_not_fit(tmp_path, capsys, tokenizer_file):
    args = make_inputs(tmp_path / "in", "jsonl")
    err = run_error(capsys, ["--input", *args, "--out", str(tmp_path / "o"), "--tokenizer", str(tokenizer_file),
                             "--vocab-size", "100"])
    assert "300 tokens" in err and "does not fit --vocab-size 100" in err
    err = run_error(capsys, ["--input", *args, "--out", str(tmp_path / "o"), "--vocab-size", "100"])
    assert "--vocab-size 100 does not fit" in err
    err = run_error(capsys, ["--input", *args, "--out", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "x.json")])
    assert "x.json: no such file" in err
    err = run_error(capsys, ["--input", *args, "--out", str(tmp_path / "o"), "--tokenizer", str(tokenizer_file),
                             "--eot-token", "<nope>"])
    assert "no end-of-text token" in err


def test_existing_corpus_needs_overwrite(tmp_path, capsys):
    args = make_inputs(tmp_path / "in", "jsonl")
    main(["--input", *args, "--out", str(tmp_path / "o"), "--bytes", "--quiet"])
    err = run_error(capsys, ["--input", *args, "--out", str(tmp_path / "o"), "--bytes"])
    assert "--overwrite" in err
    main(["--input", *args, "--out", str(tmp_path / "o"), "--bytes", "--quiet", "--overwrite"])
    main(["--input", *args, "--out", str(tmp_path / "o"), "--bytes", "--quiet", "--force"])  # the old name
    assert "--force is deprecated" in capsys.readouterr().err


def test_default_sources_are_the_stdlib_sorted():
    files = default_sources().files
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert files == sorted(files) and len(files) > 500
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    assert stdlib / "os.py" in files
