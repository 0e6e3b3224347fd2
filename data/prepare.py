"""Tokenise text into train/val token shards.

    python -m grokcopy.data.prepare --input PATH [PATH ...] --out DIR (--tokenizer FILE | --vocab-size N | --bytes)
    python -m grokcopy.data.prepare --default --out DIR

Inputs are text files of any extension, directories (searched recursively), JSON lines
(`.jsonl`, `.jsonl.gz`, `.jsonl.zst`, `.json.gz`, `.json.zst`) and parquet files whose documents are
the field `--text-field` (default `text`); text files may be `.gz` or `.zst` too (data/sources.py).
Files that look binary are skipped and named, and so is every grokcopy output inside the inputs (the
--out directory itself, a corpus, a run, an HF export): prepare never reads its own output. Each file,
JSON line or parquet row is one document;
documents are joined with an end-of-text token. A seeded, deterministic `--val-fraction` of
documents goes to the `val` split. The output directory holds `train/` and `val/` shard
directories, `meta.json` and, for BPE, `tokenizer.json`.

The corpus is built beside `--out` under a temporary name and moved into place when complete, so a
half-prepared corpus never looks finished. `--out` may be new or an empty directory; an existing
corpus is replaced only with `--overwrite` (atomically: the new one is swapped in, then the old
one's files are deleted); any other directory is refused, and prepare never deletes a file it did
not write. Preparations in one parent directory take turns (an flock on that directory), so
trainers that start together on a missing default corpus build it once.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import sys
import sysconfig
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from grokcopy.data.atomic import write_atomically
from grokcopy.data.corpus import (
    META_FILE,
    TOKENIZER_FILE,
    CorpusError,
    foreign_entries,
    open_corpus,
    remove_corpus_files,
    write_meta,
)
from grokcopy.data.errors import DataError, PrepareError
from grokcopy.data.shards import (
    DEFAULT_FRAME_TOKENS,
    DEFAULT_LEVEL,
    DEFAULT_SHARD_TOKENS,
    MAX_FRAME_TOKENS,
    MAX_LEVEL,
    MIN_LEVEL,
    ShardFormatError,
    ShardWriter,
    TokenDataset,
)
from grokcopy.data.sources import (
    CUT_BEFORE,
    PIECE_CHARS,
    ReadStats,
    Sources,
    collect_sources,
    count_documents,
    iter_pieces,
)
from grokcopy.ownership import is_inside

__all__ = [
    "PrepareError", "Sources", "Tokenizer", "build_parser", "bytes_tokenizer", "collect_sources", "default_corpus",
    "default_corpus_dir", "default_sources", "ensure_default_corpus", "load_tokenizer", "main", "open_split",
    "prepare", "summary", "train_bpe",
]

EOT_TOKEN = "<|endoftext|>"
# Names other tokenizers use for their end-of-text token, tried in order when none is given.
KNOWN_EOT_TOKENS = (EOT_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")
DEFAULT_VOCAB_SIZE = 512  # the `tiny` preset's vocabulary (docs/TINY.md)
# Text handed to the tokenizer per call: an HF encoding holds ~60 bytes per character of input
# until it is converted, so the batch, not the document, bounds that memory (~60 MB); a batch
# of many pieces is what lets tokenizers spread the work over all cores.
ENCODE_BATCH_CHARS = 1 << 20
# For a tokenizer whose output changes where a document is cut (one that prepends to every input),
# documents are cut only past this many characters, and counted.
INEXACT_PIECE_CHARS = 1 << 22
LIST_AT_MOST = 5  # file names listed in a warning before "and N more"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _listed(paths: list, at_most: int = LIST_AT_MOST) -> str:
    names = ", ".join(str(p) for p in paths[:at_most])
    return names + (f" and {len(paths) - at_most} more" if len(paths) > at_most else "")


def default_sources() -> Sources:
    """The embedded default corpus: this interpreter's standard-library .py files, sorted."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        f for f in stdlib.rglob("*.py")
        if "site-packages" not in f.relative_to(stdlib).parts and f.is_file()
    )
    return Sources(files=files)


# ---------------------------------------------------------------------------------------------
# Tokenizers: one small interface over bytes, a trained BPE and a tokenizer.json


@dataclass
class Tokenizer:
    """Encodes documents to token ids; `hf` is the HF tokenizers object (None for raw bytes).

    `cut_exact`: encoding a document in pieces (cut as data/sources.py cuts) gives the same tokens
    as encoding it whole. True for raw bytes and byte-level BPE; probed for a tokenizer file.
    """

    kind: str  # "bytes" | "bpe" | "file"
    vocab_size: int
    eot_id: int
    hf: object | None = None
    cut_exact: bool = True

    def encode_batch(self, texts: list[str | bytes]) -> list[np.ndarray]:
        """Token ids of each text: uint16 arrays for raw bytes (a str is taken as its UTF-8), else uint32."""
        if self.hf is None:
            return [np.frombuffer(t if isinstance(t, bytes) else t.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
                    for t in texts]
        # tokenizers encodes a batch on all cores (Rayon), which is how prepare uses both CPUs;
        # the _fast variant skips offsets we never read (2.5x faster, less memory; tokenizers >= 0.20).
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        return [np.asarray(e.ids, dtype=np.uint32) for e in encode(texts, add_special_tokens=False)]


def bytes_tokenizer() -> Tokenizer:
    """Raw UTF-8 bytes 0..255 plus <|endoftext|> = 256: vocab 257."""
    return Tokenizer("bytes", 257, 256)


def train_bpe(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) with <|endoftext|> as id 0.

    `texts` may be pieces of documents cut as data/sources.py cuts them: the pre-tokeniser splits
    at those places anyway, so the trained merges are those of the whole documents, while the
    trainer's memory stays bounded by the piece size (a 47 MB one-line document took 9 GB whole).
    The result may have fewer than `vocab_size` tokens when the text has no more merges to make.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise PrepareError(
            f"--vocab-size {vocab_size} does not fit: a byte-level BPE needs at least "
            f"{len(alphabet) + 1} tokens (256 bytes + {EOT_TOKEN})"
        )
    if vocab_size > 1 << 32:
        raise PrepareError(f"--vocab-size {vocab_size}: more than a uint32 shard can hold")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT_TOKEN], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer("bpe", tok.get_vocab_size(), tok.token_to_id(EOT_TOKEN), tok)


def load_tokenizer(path: Path, eot_token: str | None, max_vocab: int | None) -> Tokenizer:
    """A tokenizer.json file (e.g. a Llama tokenizer); its end-of-text token is found or named."""
    from tokenizers import Tokenizer as HFTokenizer

    if not path.is_file():
        raise PrepareError(f"--tokenizer {path}: no such file")
    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as e:
        raise PrepareError(f"--tokenizer {path}: not a tokenizers JSON file ({e})") from None
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    if max_vocab is not None and vocab_size > max_vocab:
        raise PrepareError(f"--tokenizer {path} has {vocab_size} tokens: does not fit --vocab-size {max_vocab}")
    if vocab_size > 1 << 32:
        raise PrepareError(f"--tokenizer {path} has {vocab_size} tokens: more than a uint32 shard can hold")
    candidates = (eot_token,) if eot_token else KNOWN_EOT_TOKENS
    for name in candidates:
        eot_id = tok.token_to_id(name)
        if eot_id is not None:
            return Tokenizer("file", vocab_size, eot_id, tok, cut_exact=_cuts_are_exact(tok))
    raise PrepareError(
        f"--tokenizer {path}: no end-of-text token among {list(candidates)}; name one with --eot-token"
    )


_CUT_PROBE = "def f(x):\n    return x  # note\n\n\tclass A: pass\r\nHello, world! It's 12.5 o'clock.  Two  spaces\n"


def _cuts_are_exact(hf) -> bool:
    """Whether `hf` encodes the probe text cut at every place data/sources.py may cut it into
    exactly the tokens of the whole (true of the GPT-2 pre-tokeniser; not of a normalizer that
    prepends a marker to every input)."""
    whole = hf.encode(_CUT_PROBE, add_special_tokens=False).ids
    for match in CUT_BEFORE.finditer(_CUT_PROBE):
        cut = match.start()
        parts = hf.encode_batch([_CUT_PROBE[:cut], _CUT_PROBE[cut:]], add_special_tokens=False)
        if parts[0].ids + parts[1].ids != whole:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Settings


def split_documents(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of documents that go to val: a seeded choice of round(fraction * n) documents."""
    if not 0 <= val_fraction < 1:
        raise PrepareError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * n_docs))
    if val_fraction > 0:
        if n_docs < 2:
            raise PrepareError(f"--val-fraction {val_fraction} needs at least 2 documents, found {n_docs}")
        n_val = min(max(n_val, 1), n_docs - 1)
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n_docs)[:n_val]] = True
    return is_val


def check_settings(*, val_fraction: float, seed: int, shard_tokens: int, frame_tokens: int, level: int,
                   text_field: str) -> None:
    """Raise PrepareError, naming the flag, for a setting prepare cannot use."""
    if not 0 <= val_fraction < 1:
        raise PrepareError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PrepareError(f"--seed {seed}: must be an integer >= 0")
    if shard_tokens < 1:
        raise PrepareError(f"--shard-tokens {shard_tokens}: must be >= 1")
    if not 1 <= frame_tokens <= MAX_FRAME_TOKENS:
        raise PrepareError(f"--frame-tokens {frame_tokens}: must be in [1, {MAX_FRAME_TOKENS}] "
                           f"(default {DEFAULT_FRAME_TOKENS})")
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise PrepareError(f"--level {level}: zstd levels run from {MIN_LEVEL} to {MAX_LEVEL} "
                           f"(default {DEFAULT_LEVEL})")
    if not text_field:
        raise PrepareError("--text-field: must name a field")


# ---------------------------------------------------------------------------------------------
# The output directory: checked, locked, built beside, swapped in


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an --out that prepare may not fill: a file, a directory holding anything prepare did
    not write, or an existing corpus without `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"--out {out_dir} is a file, not a directory: choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        foreign = foreign_entries(out_dir)
        if foreign:
            raise PrepareError(
                f"--out {out_dir} is not empty and not a grokcopy corpus: it holds {_listed(foreign)}, which prepare "
                "did not write and will not delete; choose a new or empty directory"
            )
        if not overwrite:
            what = "a prepared corpus" if (out_dir / META_FILE).is_file() else "part of a corpus (no meta.json)"
            raise PrepareError(f"--out {out_dir} already holds {what}; pass --overwrite to replace it")
    if not os.access(out_dir.parent, os.W_OK):
        raise PrepareError(f"--out {out_dir}: cannot write in {out_dir.parent} (read-only, or no permission); "
                           "choose another --out")


def _build_dir_name(out_dir: Path) -> str:
    return f".{out_dir.name}.prepare-"


@contextmanager
def corpus_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on `out_dir`'s parent directory while preparing `out_dir`.

    Concurrent trainers on a missing default corpus thus prepare it once: the first builds, the
    others wait here, then find it. Locking the parent (not a lock file) leaves no file behind;
    the kernel drops the lock when the process ends, kill -9 included.
    """
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrepareError(f"--out {out_dir}: cannot create {parent} ({e.strerror})") from None
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process preparing a corpus in {parent} ...", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stale_builds(out_dir: Path) -> None:
    """Delete the build directories a killed prepare of `out_dir` left (under the lock, no other
    prepare is building there); only the files prepare writes are deleted."""
    for stale in out_dir.parent.glob(f"{_build_dir_name(out_dir)}*"):
        if stale.is_dir() and not stale.is_symlink():
            left = remove_corpus_files(stale)
            if left:
                warn(f"left {stale} in place: it holds {_listed(left)}, which prepare did not write")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE). False where the
    system or the file system cannot; then the caller renames twice."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(build_dir: Path, out_dir: Path) -> None:
    """Move the finished `build_dir` to `out_dir`. An existing corpus there is swapped out
    atomically and its files deleted afterwards; readers see the old corpus or the new one."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if _exchange(build_dir, out_dir):
            old = build_dir  # after the swap, the build name holds the old corpus
        else:
            old = out_dir.with_name(f"{_build_dir_name(out_dir)}old-{os.getpid()}")
            os.rename(out_dir, old)
            os.rename(build_dir, out_dir)
        _fsync_dir(out_dir.parent)
        left = remove_corpus_files(old)
        if left:
            warn(f"left {old} in place: it holds {_listed(left)}, which prepare did not write")
    else:
        try:
            os.rename(build_dir, out_dir)  # replaces an empty directory, refuses a non-empty one
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise PrepareError(f"--out {out_dir}: files appeared there while preparing; nothing was replaced, "
                                   "choose a new or empty directory") from None
            raise
        _fsync_dir(out_dir.parent)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _Tally:
    """Counts taken while encoding."""

    text_bytes: int = 0
    documents_cut: int = 0


def prepare(
    sources: Sources,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Tokenizer | None = None,
    bpe_vocab_size: int | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    description: str = "",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    frame_tokens: int = DEFAULT_FRAME_TOKENS,
    level: int = DEFAULT_LEVEL,
    text_field: str = "text",
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenise `sources` into `out_dir` and return the meta.json contents (plus "seconds" and
    "disk_bytes").

    Give either a ready `tokenizer` or `bpe_vocab_size` (a BPE trained on the train documents only,
    so val stays held out). `out_dir` must be new, empty, or (with `overwrite`) a corpus; `force`
    is the old name of `overwrite`. Raises PrepareError for bad settings or inputs, OSError for
    the file system's refusals (a full disk); on any error `out_dir` is left as it was.
    """
    out_dir = Path(out_dir).resolve()  # a symlinked --out: build beside, and replace, its target
    with corpus_lock(out_dir):
        return _prepare_locked(
            sources, out_dir, tokenizer=tokenizer, bpe_vocab_size=bpe_vocab_size, val_fraction=val_fraction,
            seed=seed, description=description, shard_tokens=shard_tokens, frame_tokens=frame_tokens, level=level,
            text_field=text_field, overwrite=overwrite or force, progress=progress,
        )


def _prepare_locked(sources: Sources, out_dir: Path, *, tokenizer: Tokenizer | None, bpe_vocab_size: int | None,
                    val_fraction: float, seed: int, description: str, shard_tokens: int, frame_tokens: int,
                    level: int, text_field: str, overwrite: bool, progress: bool) -> dict:
    t0 = time.time()
    check_settings(val_fraction=val_fraction, seed=seed, shard_tokens=shard_tokens, frame_tokens=frame_tokens,
                   level=level, text_field=text_field)
    if tokenizer is None and bpe_vocab_size is None:
        raise PrepareError("choose a tokenizer: --tokenizer FILE, --vocab-size N or --bytes")
    _check_out_dir(out_dir, overwrite)
    _remove_stale_builds(out_dir)
    if sources.excluded:
        warn(f"skipped {len(sources.excluded)} directories inside the inputs that grokcopy wrote, not read as text: "
             + _listed([f"{folder} ({why})" for folder, why in sources.excluded]))
    if sources.skipped:
        warn(f"skipped {len(sources.skipped)} files that look binary (a NUL byte in the first 8 KiB): "
             f"{_listed(sources.skipped)}")
    if not sources.files:
        raise PrepareError("the inputs hold no files to read (empty directory, or only binary files)")
    # Documents are streamed, never held: one pass counts them (the split needs the count), a BPE
    # trains on a pass of its own, then one pass tokenises them and writes both splits.
    n_docs = count_documents(sources.files, text_field)
    if n_docs == 0:
        raise PrepareError(f"the inputs ({len(sources.files)} files) hold no text: every document is empty")
    is_val = split_documents(n_docs, val_fraction, seed)
    if val_fraction == 0:
        warn("--val-fraction 0: the corpus gets no val split, and train.py needs one to evaluate")
    raw = tokenizer is not None and tokenizer.kind == "bytes"

    def pieces(piece_chars: int = PIECE_CHARS, stats: ReadStats | None = None):
        return _with_split(iter_pieces(sources.files, text_field=text_field, raw=raw, piece_chars=piece_chars,
                                       stats=stats), is_val)

    requested_vocab = None
    if tokenizer is None:
        requested_vocab = bpe_vocab_size
        tokenizer = train_bpe((piece for piece, _, val in pieces() if not val), bpe_vocab_size)
        if tokenizer.vocab_size < bpe_vocab_size:
            warn(f"--vocab-size {bpe_vocab_size}: the train text supports only {tokenizer.vocab_size} tokens "
                 f"(no pair of symbols is left to merge); the corpus has vocab_size {tokenizer.vocab_size}, "
                 "recorded in meta.json")
    piece_chars = PIECE_CHARS if tokenizer.cut_exact else INEXACT_PIECE_CHARS

    build_dir = out_dir.with_name(f"{_build_dir_name(out_dir)}{os.getpid()}")
    build_dir.mkdir()
    try:
        stats, tally = ReadStats(), _Tally()
        writer_settings = {"shard_tokens": shard_tokens, "frame_tokens": frame_tokens, "level": level}
        # One pass writes both splits, each document's tokens to its split's writer.
        with tqdm(total=n_docs, unit="doc", desc="tokenising", disable=not progress) as bar, \
                ShardWriter(build_dir / "train", tokenizer.vocab_size, **writer_settings) as train_writer, \
                ShardWriter(build_dir / "val", tokenizer.vocab_size, **writer_settings) as val_writer:
            for tokens, val in _encode(pieces(piece_chars, stats), tokenizer, bar, tally):
                (val_writer if val else train_writer).write(tokens)
        meta_splits = {
            split: {"documents": int((is_val == (split == "val")).sum()), "tokens": writer.n_tokens,
                    "shards": {p.name: f"{crc:08x}" for p, crc in zip(writer.paths, writer.header_crcs, strict=True)}}
            for split, writer in (("train", train_writer), ("val", val_writer))
        }
        tokenizer_meta = {"kind": tokenizer.kind, "file": None, "eot_id": tokenizer.eot_id}
        if tokenizer.hf is not None:
            text = tokenizer.hf.to_str(pretty=True).encode()  # as HF save() writes it
            write_atomically(build_dir / TOKENIZER_FILE, lambda f: f.write(text))
            tokenizer_meta.update(file=TOKENIZER_FILE, crc32=f"{zlib.crc32(text):08x}")
        if stats.replaced_bytes:
            warn(f"{stats.replaced_bytes:,} bytes that are not UTF-8, in {len(stats.files_with_replacements)} files "
                 f"({_listed(stats.files_with_replacements)}), became U+FFFD for the tokenizer (--bytes keeps them)")
        if not tokenizer.cut_exact and tally.documents_cut:
            warn(f"{tally.documents_cut} documents longer than {INEXACT_PIECE_CHARS:,} characters were encoded in "
                 "pieces; this tokenizer may pick other tokens at each cut than it would for the whole document")
        meta = {
            "format_version": 1,
            "source": description or f"{len(sources.files)} input files",
            "input_files": len(sources.files),
            "skipped_binary_files": len(sources.skipped),
            "skipped_files": [str(p) for p in sources.skipped[:100]],
            "text_field": text_field,
            "tokenizer": tokenizer_meta,
            "vocab_size": tokenizer.vocab_size,
            **({"requested_vocab_size": requested_vocab} if requested_vocab is not None else {}),
            "val_fraction": val_fraction,
            "seed": seed,
            "splits": meta_splits,
            "text_bytes": tally.text_bytes,
            "replaced_bytes": stats.replaced_bytes,
            **({"long_documents_cut": tally.documents_cut} if not tokenizer.cut_exact else {}),
        }
        write_meta(build_dir, meta)
        for split in ("train", "val"):
            _fsync_dir(build_dir / split)
        _fsync_dir(build_dir)
        _install(build_dir, out_dir)
    except BaseException:
        if build_dir.is_dir():
            remove_corpus_files(build_dir)
        raise
    meta["seconds"] = time.time() - t0
    meta["disk_bytes"] = sum(f.stat().st_size for f in out_dir.rglob("*.tok"))
    return meta


def _with_split(pieces: Iterator[tuple[str | bytes, bool]],
                is_val: np.ndarray) -> Iterator[tuple[str | bytes, bool, bool]]:
    """(piece, is_last_piece_of_its_document, document_is_val) for every piece."""
    doc = 0
    for piece, last in pieces:
        if doc >= len(is_val):
            raise PrepareError(f"the inputs changed while preparing (more than the {len(is_val)} documents "
                               "counted at the start); prepare again")
        yield piece, last, bool(is_val[doc])
        doc += last
    if doc != len(is_val):
        raise PrepareError(f"the inputs changed while preparing ({doc} documents, {len(is_val)} counted at the "
                           "start); prepare again")


def _encode(pieces: Iterator[tuple[str | bytes, bool, bool]], tokenizer: Tokenizer, bar: tqdm,
            tally: _Tally) -> Iterator[tuple[np.ndarray, bool]]:
    """(tokens, document_is_val) for a stream of document pieces, an end-of-text token after each
    document.

    Pieces are encoded in batches of about ENCODE_BATCH_CHARS characters, so that HF tokenizers
    can spread a batch over the cores while the memory it holds stays bounded.
    """
    eot = np.array([tokenizer.eot_id], dtype=np.uint32)
    batch: list[str | bytes] = []
    tags: list[tuple[bool, bool]] = []  # (last, val) of each piece in the batch
    chars = 0
    in_cut_document = False

    def flush() -> Iterator[tuple[np.ndarray, bool]]:
        for tokens, (last, val) in zip(tokenizer.encode_batch(batch), tags, strict=True):
            yield tokens, val
            if last:
                yield eot, val
                bar.update(1)
        batch.clear()
        tags.clear()

    for piece, last, val in pieces:
        batch.append(piece)
        tags.append((last, val))
        chars += len(piece)
        tally.text_bytes += len(piece) if isinstance(piece, bytes) or piece.isascii() else len(piece.encode("utf-8"))
        tally.documents_cut += not last and not in_cut_document
        in_cut_document = not last
        if chars >= ENCODE_BATCH_CHARS:
            yield from flush()
            chars = 0
    if batch:
        yield from flush()


def open_split(corpus_dir: str | os.PathLike, split: str) -> TokenDataset:
    """The `split` ("train" or "val") of a prepared corpus directory, checked as open_corpus checks it."""
    corpus = open_corpus(corpus_dir, require_val=split == "val")
    return corpus.train if split == "train" else corpus.val


def summary(meta: dict) -> str:
    """The closing report: documents, tokens per split, bytes on disk, compression, time."""
    splits = meta["splits"]
    tokens = sum(s["tokens"] for s in splits.values())
    itemsize = 2 if meta["vocab_size"] <= 1 << 16 else 4
    vocab = f"vocab {meta['vocab_size']}"
    if meta.get("requested_vocab_size", meta["vocab_size"]) != meta["vocab_size"]:
        vocab += f", of --vocab-size {meta['requested_vocab_size']} asked for"
    lines = [
        f"source: {meta['source']}",
        f"tokenizer: {meta['tokenizer']['kind']} ({vocab})",
        f"documents: {sum(s['documents'] for s in splits.values())} "
        + " ".join(f"({k}: {v['documents']})" for k, v in splits.items()),
        "tokens: " + ", ".join(f"{k} {v['tokens']:,}" for k, v in splits.items()),
        f"text: {meta['text_bytes']:,} bytes ({meta['text_bytes'] / max(tokens, 1):.2f} bytes/token)",
        f"on disk: {meta['disk_bytes']:,} bytes; compression {tokens * itemsize / max(meta['disk_bytes'], 1):.2f}x "
        f"over raw uint{8 * itemsize}, {meta['text_bytes'] / max(meta['disk_bytes'], 1):.2f}x over the text",
        f"seconds: {meta['seconds']:.1f}",
    ]
    if meta.get("skipped_binary_files"):
        lines.insert(1, f"skipped {meta['skipped_binary_files']} binary files")
    if meta.get("replaced_bytes"):
        lines.insert(1, f"replaced {meta['replaced_bytes']:,} undecodable bytes by U+FFFD")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The default corpus


def default_description() -> str:
    v = sys.version_info
    return f"Python {v.major}.{v.minor} standard library .py files ({sysconfig.get_paths()['stdlib']})"


def default_corpus(out_dir: str | os.PathLike, *, bytes_level: bool = False,
                   vocab_size: int = DEFAULT_VOCAB_SIZE, progress: bool = True) -> dict:
    """Prepare the embedded default corpus (this Python's standard library) into `out_dir`,
    replacing a corpus there."""
    return prepare(default_sources(), out_dir, description=default_description(), progress=progress,
                   tokenizer=bytes_tokenizer() if bytes_level else None, bpe_vocab_size=vocab_size, overwrite=True)


def default_corpus_dir(bytes_level: bool = False, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Where the default corpus lives: $GROKCOPY_DATA (default ~/.cache/grokcopy), named by tokenizer."""
    root = Path(os.environ.get("GROKCOPY_DATA", Path.home() / ".cache" / "grokcopy")).expanduser()
    v = sys.version_info
    return root / f"stdlib-py{v.major}{v.minor}-{'bytes' if bytes_level else f'bpe{vocab_size}'}"


def _usable(corpus_dir: Path) -> bool:
    """Whether the default corpus at `corpus_dir` is there and passes open_corpus's checks; a
    damaged one is said so (it is grokcopy's own cache, so it is then rebuilt)."""
    if not (corpus_dir / META_FILE).is_file():
        return False
    try:
        open_corpus(corpus_dir)
    except (CorpusError, ShardFormatError) as e:
        warn(f"the default corpus is damaged ({e}); preparing it again")
        return False
    return True


def ensure_default_corpus(bytes_level: bool = False, vocab_size: int = DEFAULT_VOCAB_SIZE,
                          progress: bool = True) -> Path:
    """The default corpus directory, prepared first if it is missing or damaged.

    Safe to call from many processes at once: one prepares while the others wait for it
    (corpus_lock), then all use the same corpus.
    """
    out = default_corpus_dir(bytes_level, vocab_size).resolve()
    if _usable(out):
        return out
    with corpus_lock(out):
        if not _usable(out):  # another process may have prepared it while this one waited
            meta = _prepare_locked(
                default_sources(), out, tokenizer=bytes_tokenizer() if bytes_level else None,
                bpe_vocab_size=vocab_size, val_fraction=0.05, seed=0, description=default_description(),
                shard_tokens=DEFAULT_SHARD_TOKENS, frame_tokens=DEFAULT_FRAME_TOKENS, level=DEFAULT_LEVEL,
                text_field="text", overwrite=True, progress=progress,
            )
            print(summary(meta))
    return out


# ---------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One `error:` line for a bad command line (argparse prints the whole usage first)."""
        self.exit(2, f"error: {message} (see python -m grokcopy.data.prepare --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a shortened or misspelt flag is an error, not silently another flag
    parser = _Parser(prog="python -m grokcopy.data.prepare", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH",
                     help="text files, directories, .jsonl / .json.gz / .jsonl.zst files, .parquet files")
    src.add_argument("--default", action="store_true", help="the Python standard library's own sources")
    parser.add_argument("--out", required=True, help="output corpus directory (new, empty, or a corpus to "
                        "replace with --overwrite)")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", metavar="FILE", help="an existing HF tokenizers JSON file")
    tok.add_argument("--bytes", action="store_true", help="raw bytes: vocab 256 + <|endoftext|>")
    parser.add_argument("--vocab-size", type=int, help="train a byte-level BPE of this size "
                        "(with --tokenizer: the largest vocab the tokenizer may have)")
    parser.add_argument("--eot-token", help="end-of-text token of --tokenizer (default: found by name)")
    parser.add_argument("--text-field", default="text", metavar="NAME",
                        help="the field of JSON lines and the column of parquet files that holds the text")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame-tokens", type=int, default=DEFAULT_FRAME_TOKENS)
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS)
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd compression level (1-22)")
    parser.add_argument("--overwrite", action="store_true", help="replace the corpus already in --out")
    parser.add_argument("--force", action="store_true", help=argparse.SUPPRESS)  # the old name of --overwrite
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _run(args: argparse.Namespace) -> dict:
    if args.vocab_size is not None and args.vocab_size < 1:
        raise PrepareError(f"--vocab-size {args.vocab_size}: must be a positive number of tokens")
    if args.bytes and args.vocab_size not in (None, 257):
        raise PrepareError(f"--vocab-size {args.vocab_size} does not apply to --bytes, whose vocabulary is always "
                           "257 (256 bytes + <|endoftext|>): drop one of the two")
    if args.eot_token and not args.tokenizer:
        raise PrepareError("--eot-token names the end-of-text token of a --tokenizer file; there is none here")
    if args.force:
        warn("--force is deprecated: it is now called --overwrite")
    if args.tokenizer:
        tokenizer = load_tokenizer(Path(args.tokenizer), args.eot_token, args.vocab_size)
    elif args.bytes:
        tokenizer = bytes_tokenizer()
    elif args.vocab_size is None and not args.default:
        raise PrepareError("choose a tokenizer: --tokenizer FILE, --vocab-size N or --bytes")
    else:
        tokenizer = None
    if args.default:
        sources, description = default_sources(), default_description()
    else:
        out = Path(args.out).resolve()
        for path in args.input:
            if is_inside(Path(path), out):
                raise PrepareError(f"--input {path} is the --out directory {args.out} or inside it: prepare never "
                                   "reads the corpus it writes; choose another --out")
        sources = collect_sources(args.input, exclude=[out])
        description = ", ".join(args.input)
    return prepare(
        sources, args.out, tokenizer=tokenizer, bpe_vocab_size=args.vocab_size or DEFAULT_VOCAB_SIZE,
        val_fraction=args.val_fraction, seed=args.seed, description=description, shard_tokens=args.shard_tokens,
        frame_tokens=args.frame_tokens, level=args.level, text_field=args.text_field,
        overwrite=args.overwrite or args.force, progress=not args.quiet,
    )


_OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another --out",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EACCES: "permission denied: check the file's permissions, or choose another path",
    errno.EPERM: "operation not permitted: check the file's permissions, or choose another path",
    errno.EIO: "an I/O error: the disk may be failing",
}


def describe_os_error(error: OSError) -> str:
    """One line for an OSError: the file, the system's words, and what to do."""
    where = f"{error.filename}: " if error.filename else ""
    hint = _OS_ERROR_HINTS.get(error.errno)
    return f"{where}{error.strerror or error}" + (f" ({hint})" if hint else "")


def main(argv: list[str] | None = None) -> None:
    """The command line: one `error:` line and exit 2 for a usage error, 1 for a runtime error
    (OSError, a damaged file), 130 when interrupted. GROKCOPY_DEBUG=1 shows the traceback instead."""
    args = build_parser().parse_args(argv)
    debug = os.environ.get("GROKCOPY_DEBUG") == "1"
    try:
        meta = _run(args)
    except (DataError, OSError, KeyboardInterrupt) as e:
        if debug:
            raise
        if isinstance(e, PrepareError):
            message, code = str(e), 2
        elif isinstance(e, OSError):
            message, code = describe_os_error(e), 1
        elif isinstance(e, KeyboardInterrupt):
            message, code = "interrupted; --out was left as it was", 130
        else:
            message, code = str(e), 1
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(code) from None
    print(summary(meta))


if __name__ == "__main__":
    main()
