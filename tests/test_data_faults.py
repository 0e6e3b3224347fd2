"""Fault injection on every file data/ writes (shards, meta.json, tokenizer.json): flipped bits,
truncation at every offset, kill -9 at every write, fsync, rename and delete of `data.prepare`,
and a full disk (a real tmpfs where this machine may mount one, and a simulated ENOSPC at every
write everywhere).

The goal is 0 silent or wrong outcomes: every damaged file is refused with grokcopy's own error
naming it (never read as tokens, never a raw traceback), and after every kill or full disk the
output directory holds the old corpus or the new one, whole, and the next prepare cleans up.
Each test prints its case count and outcomes (`pytest -s`).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import grokcopy.data.prepare
from grokcopy.data import CorpusError, ShardFormatError, TokenDataset, open_corpus, write_shards
from grokcopy.data.prepare import main

SOURCE = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
TEXTS = [SOURCE[i * len(SOURCE) // 6 : (i + 1) * len(SOURCE) // 6] for i in range(6)]


def report(name: str, outcomes: Counter) -> None:
    print(f"\n{name}: {sum(outcomes.values())} cases: {dict(outcomes)}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    for i, t in enumerate(TEXTS):
        (root / f"{i}.py").write_text(t)
    return root


def prepare_argv(inputs: Path, out: Path, seed: int, *extra: str) -> list[str]:
    # a BPE (so tokenizer.json is written too) and small shards (several per split)
    return ["--input", str(inputs), "--out", str(out), "--vocab-size", "280", "--val-fraction", "0.34",
            "--seed", str(seed), "--shard-tokens", "2000", "--frame-tokens", "300", "--quiet", *extra]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def references(inputs, tmp_path_factory) -> dict[int, dict[str, bytes]]:
    """The corpus of seed 0 (the old one) and of seed 1 (the new one), prepared without faults."""
    root = tmp_path_factory.mktemp("references")
    trees = {}
    for seed in (0, 1):
        main(prepare_argv(inputs, root / str(seed), seed))
        trees[seed] = tree(root / str(seed))
    assert trees[0] != trees[1] and len([n for n in trees[0] if n.endswith(".tok")]) >= 3
    return trees


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


# ---------------------------------------------------------------------------------------------
# Damaged files


@pytest.fixture
def small_shard(tmp_path):
    tokens = np.random.default_rng(2).integers(0, 50, 70)
    (path,) = write_shards([tokens], tmp_path, 50, frame_tokens=32, level=3)
    return path, tokens


def read_outcome(path: Path, expected: np.ndarray) -> str:
    try:
        tokens = TokenDataset(path)[:]
    except ShardFormatError as e:
        assert str(path) in str(e)
        return "ShardFormatError naming the file"
    return "same tokens (harmless)" if np.array_equal(tokens, expected) else "WRONG TOKENS"


def flipped(data: bytes, bit: int) -> bytes:
    """`data` with bit number `bit` (counting from bit 0 of byte 0) inverted."""
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def test_every_bit_flip_of_a_shard(small_shard):
    path, tokens = small_shard
    data = path.read_bytes()
    outcomes = Counter()
    for bit in range(len(data) * 8):
        path.write_bytes(flipped(data, bit))
        outcomes[read_outcome(path, tokens)] += 1
    report("shard bit flips", outcomes)
    assert outcomes == {"ShardFormatError naming the file": len(data) * 8}


def test_every_truncation_and_extension_of_a_shard(small_shard):
    path, tokens = small_shard
    data = path.read_bytes()
    outcomes = Counter()
    for damaged in [data[:cut] for cut in range(len(data))] + [data + b"\0", data + data]:
        path.write_bytes(damaged)
        outcomes[read_outcome(path, tokens)] += 1
    report("shard truncations and extensions", outcomes)
    assert outcomes == {"ShardFormatError naming the file": len(data) + 2}


def corpus_outcome(corpus: Path, good_meta: dict) -> str:
    try:
        meta = open_corpus(corpus).meta
    except (CorpusError, ShardFormatError) as e:
        assert str(corpus) in str(e)
        return "CorpusError naming the file"
    return "same content (harmless)" if meta == good_meta else "WRONG META ACCEPTED"


@pytest.fixture
def corpus(references, tmp_path) -> Path:
    write_tree(tmp_path / "c", references[0])
    return tmp_path / "c"


def test_every_bit_flip_and_truncation_of_meta_json(corpus):
    path = corpus / "meta.json"
    data = path.read_bytes()
    good = json.loads(data)
    outcomes = Counter()
    for bit in range(len(data) * 8):
        path.write_bytes(flipped(data, bit))
        outcomes[corpus_outcome(corpus, good)] += 1
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        outcomes[corpus_outcome(corpus, good)] += 1
    report("meta.json bit flips and truncations", outcomes)
    assert set(outcomes) <= {"CorpusError naming the file", "same content (harmless)"}, outcomes
    # harmless: JSON that reads back the same: the file cut just before its final newline
    assert outcomes["same content (harmless)"] <= 1


def test_bit_flips_and_truncations_of_tokenizer_json(corpus):
    path = corpus / "tokenizer.json"
    data = path.read_bytes()
    good = open_corpus(corpus).meta
    rng = np.random.default_rng(0)
    outcomes = Counter()
    for bit in rng.choice(len(data) * 8, 500, replace=False):
        path.write_bytes(flipped(data, bit))
        outcomes[corpus_outcome(corpus, good)] += 1
    for cut in rng.choice(len(data), 100, replace=False):
        path.write_bytes(data[:cut])
        outcomes[corpus_outcome(corpus, good)] += 1
    report("tokenizer.json bit flips and truncations (sampled)", outcomes)
    assert outcomes == {"CorpusError naming the file": 600}


def test_every_shard_of_a_corpus_emptied_halved_swapped_or_removed(corpus, references):
    """Whole-file faults: each shard emptied, cut in half, replaced by every other shard (a valid
    shard in the wrong place), or deleted."""
    good = open_corpus(corpus).meta
    shards = sorted(n for n in references[0] if n.endswith(".tok"))
    outcomes = Counter()
    for name in shards:
        replacements = [b"", references[0][name][: len(references[0][name]) // 2]]
        replacements += [references[0][other] for other in shards if other != name]
        for damaged in [*replacements, None]:
            write_tree(corpus, references[0])
            if damaged is None:
                (corpus / name).unlink()
            else:
                (corpus / name).write_bytes(damaged)
            outcomes[corpus_outcome(corpus, good)] += 1
    report("shards emptied, halved, swapped or removed", outcomes)
    assert outcomes == {"CorpusError naming the file": len(shards) * (len(shards) + 2)}


# ---------------------------------------------------------------------------------------------
# kill -9 at every write, fsync, rename and delete


class FileProxy:
    """A file object that passes everything to the file it wraps; fault injectors override write."""

    def __init__(self, f):
        self._f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _run_killed_at(kill_at: int, argv: list[str]) -> str:
    """Run `main(argv)` in a forked child that SIGKILLs itself at its `kill_at`-th file-system
    event; returns "killed" or "completed"."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            _arm_kill_switch(kill_at)
            main(argv)
            code = 0
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status}"
    return "completed"


def _arm_kill_switch(kill_at: int) -> None:
    """Count file-system events (each file write, fsync, rename/replace before and after, the
    directory swap before and after, each unlink and rmdir) and SIGKILL at the kill_at-th. At a
    write, half the data is written first, so the kill leaves a half-written file."""
    from pathlib import Path as _Path

    count = [0]

    def event() -> bool:
        count[0] += 1
        return count[0] == kill_at

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    class KillingFile(FileProxy):
        def write(self, b):
            if event():
                self._f.write(b[: len(b) // 2])
                self._f.flush()
                die()
            return self._f.write(b)

    def before(fn):
        def wrapped(*args, **kwargs):
            if event():
                die()
            return fn(*args, **kwargs)
        return wrapped

    def around(fn):
        def wrapped(*args, **kwargs):
            if event():
                die()
            result = fn(*args, **kwargs)
            if event():
                die()
            return result
        return wrapped

    real_fdopen = os.fdopen
    os.fdopen = lambda *a, **k: KillingFile(real_fdopen(*a, **k))
    os.fsync = before(os.fsync)
    os.replace = around(os.replace)
    os.rename = around(os.rename)
    grokcopy.data.prepare._exchange = around(grokcopy.data.prepare._exchange)
    _Path.unlink = before(_Path.unlink)
    _Path.rmdir = before(_Path.rmdir)


@pytest.mark.parametrize("scenario", ["new corpus", "overwrite"])
def test_kill_9_at_every_file_system_event(inputs, references, tmp_path, scenario):
    """After a kill at any point, --out holds the old corpus or the new one, whole (open_corpus
    passes and the files equal a clean run's); the next prepare succeeds and leaves nothing else."""
    parent = tmp_path / "parent"
    out = parent / "corpus"
    outcomes = Counter()
    kill_at = 0
    while True:
        kill_at += 1
        shutil.rmtree(parent, ignore_errors=True)
        parent.mkdir()
        extra = []
        if scenario == "overwrite":
            write_tree(out, references[0])
            extra = ["--overwrite"]
        ended = _run_killed_at(kill_at, prepare_argv(inputs, out, 1, *extra))
        state = tree(out) if out.is_dir() else None
        if state == references[1]:
            outcomes[f"{ended}: new corpus whole"] += 1
        elif state == references[0] and scenario == "overwrite":
            outcomes[f"{ended}: old corpus whole"] += 1
        elif state is None and scenario == "new corpus":
            outcomes[f"{ended}: no corpus yet"] += 1
        else:
            outcomes[f"{ended}: WRONG STATE {sorted(state or {})}"] += 1
        if state is not None:
            open_corpus(out)
        # the next run (--overwrite: replacing whatever is there) finishes and cleans up
        main(prepare_argv(inputs, out, 1, "--overwrite"))
        assert tree(out) == references[1]
        assert [p.name for p in parent.iterdir()] == ["corpus"], "a build directory was left behind"
        if ended == "completed":
            break
    report(f"kill -9 ({scenario})", outcomes)
    assert all("WRONG" not in k for k in outcomes), outcomes
    assert kill_at > 20  # every shard, tokenizer.json and meta.json write was a kill point


# ---------------------------------------------------------------------------------------------
# A full disk


def enospc_outcome(capsys, argv: list[str], out: Path, old: dict[str, bytes] | None,
                   new: dict[str, bytes]) -> str:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    if code == 0:
        return "fits: new corpus" if tree(out) == new else "WRONG: completed with other files"
    if "Traceback" in err or [line for line in lines if line.startswith("error:")] != lines[-1:]:
        return f"WRONG: not one error line: {err!r}"
    if code != 1 or "No space left on device" not in lines[-1] or "disk is full" not in lines[-1]:
        return f"WRONG: exit {code}, {lines[-1]!r}"
    state = tree(out) if out.is_dir() else None
    if state != old:
        return "WRONG: --out changed"
    return "error: disk full, --out untouched"


def full_disk_at(k: int, real_fdopen):
    """An os.fdopen whose files raise ENOSPC (without a file name, as a write does) at the k-th write."""
    count = [0]

    class FullDisk(FileProxy):
        def write(self, b):
            count[0] += 1
            if count[0] == k:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._f.write(b)

    return lambda *args, **kwargs: FullDisk(real_fdopen(*args, **kwargs))


def test_simulated_enospc_at_every_write(inputs, references, tmp_path, capsys, monkeypatch):
    """ENOSPC raised by the k-th file write (as a full disk does), for every k, with an old corpus
    in --out: one error line naming the file, exit 1, the old corpus untouched, nothing left over.
    Runs everywhere (the tmpfs test below needs root)."""
    out = tmp_path / "corpus"
    outcomes = Counter()
    k = 0
    while True:
        k += 1
        shutil.rmtree(out, ignore_errors=True)
        write_tree(out, references[0])
        monkeypatch.setattr(os, "fdopen", full_disk_at(k, os.fdopen))
        outcome = enospc_outcome(capsys, [*prepare_argv(inputs, out, 1, "--overwrite")], out, references[0],
                                 references[1])
        monkeypatch.undo()
        outcomes[outcome] += 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"], "a build directory was left behind"
        if outcome.startswith("fits"):
            break
    report("simulated ENOSPC at each write", outcomes)
    assert set(outcomes) == {"error: disk full, --out untouched", "fits: new corpus"}, outcomes
    assert k > 10


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount tmpfs file systems of a chosen size under tmp_path (needs root and mount permission)."""
    mounts = []

    def mount(size_kib: int) -> Path:
        path = tmp_path / f"tmpfs-{len(mounts)}-{size_kib}k"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); "
                        "test_simulated_enospc_at_every_write covers ENOSPC without one")
        mounts.append(path)
        return path

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_simulated_enospc_at_every_write covers ENOSPC without one")
    yield mount
    for path in mounts:
        subprocess.run(["umount", str(path)], check=True)


def test_a_real_full_disk(inputs, references, small_tmpfs, capsys):
    """Prepare into tmpfs file systems from too small to large enough, 4 KiB apart, with and without
    an old corpus there: a full disk is one error line and exit 1, and --out is left as it was."""
    def kib_on_tmpfs(files: dict[str, bytes]) -> int:  # tmpfs gives each file whole 4 KiB pages
        return sum(-(-len(b) // 4096) * 4 for b in files.values())

    new_size, old_size = kib_on_tmpfs(references[1]), kib_on_tmpfs(references[0])
    outcomes = Counter()
    for size_kib in range(4, new_size + 12, 4):
        disk = small_tmpfs(size_kib)
        outcomes[enospc_outcome(capsys, prepare_argv(inputs, disk / "corpus", 1), disk / "corpus", None,
                                references[1])] += 1
        assert [p.name for p in disk.iterdir()] in ([], ["corpus"])
    for size_kib in range(old_size + 4, old_size + new_size + 12, 4):
        disk = small_tmpfs(size_kib)
        write_tree(disk / "corpus", references[0])
        outcome = enospc_outcome(capsys, prepare_argv(inputs, disk / "corpus", 1, "--overwrite"),
                                 disk / "corpus", references[0], references[1])
        outcomes[outcome] += 1
        assert [p.name for p in disk.iterdir()] == ["corpus"]
    report("real tmpfs full disk", outcomes)
    assert set(outcomes) == {"error: disk full, --out untouched", "fits: new corpus"}, outcomes


def test_the_fault_suite_runs_in_this_interpreter():
    assert sys.platform.startswith("linux"), "os.fork, flock and renameat2 are what these tests exercise"
