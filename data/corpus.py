"""A prepared corpus directory: its meta.json (written with a checksum, read with checks), the check
of meta.json against the shard headers, and which files in it grokcopy wrote.

    corpus = open_corpus(DIR)          # Corpus(meta, train, val), or a CorpusError naming the file
    meta, train_data, val_data = open_corpus(DIR)
    corpus_identity(corpus)            # what a run trains on, by content (recorded in the run)

The directory layout and meta.json's fields are specified in data/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import NamedTuple

from grokcopy.data.atomic import write_atomically
from grokcopy.data.errors import CorpusError
from grokcopy.data.shards import SHARD_SUFFIX, TokenDataset

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")
META_FORMAT_VERSION = 1
TOKENIZER_KINDS = ("bytes", "bpe", "file")
# Every key prepare has ever written. A meta.json without a checksum (written before there was
# one) is accepted only with keys from this set, so a flipped bit in the key "checksum" itself is
# caught as an unknown key instead of passing as an old file.
META_KEYS = frozenset({
    "format_version", "source", "input_files", "skipped_binary_files", "skipped_files", "tokenizer",
    "vocab_size", "requested_vocab_size", "val_fraction", "seed", "splits", "text_bytes", "text_field",
    "replaced_bytes", "long_documents_cut", "checksum",
})

# Names grokcopy writes in a corpus directory, and the temp files of write_atomically beside them.
_TOP_LEVEL_FILES = re.compile(r"(meta|tokenizer)\.json|\.(meta|tokenizer)\.json\..+\.tmp")
_SHARD_FILES = re.compile(rf"\.?shard-\d+{re.escape(SHARD_SUFFIX)}(\..+\.tmp)?")


class Corpus(NamedTuple):
    """A checked corpus: meta.json's contents and the token datasets of its splits (val is None
    only when it was opened with require_val=False and has no val split)."""

    meta: dict
    train: TokenDataset
    val: TokenDataset | None


# ---------------------------------------------------------------------------------------------
# meta.json


def meta_checksum(meta: dict) -> str:
    """CRC32 of meta.json's content without its "checksum" key, as canonical JSON (sorted keys,
    no spaces): a checksum of what the file says, not of its layout."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"crc32:{zlib.crc32(canonical.encode()):08x}"


def write_meta(corpus_dir: str | os.PathLike, meta: dict) -> None:
    """Write `corpus_dir`/meta.json atomically, with its checksum."""
    text = json.dumps({**meta, "checksum": meta_checksum(meta)}, indent=2) + "\n"
    write_atomically(Path(corpus_dir) / META_FILE, lambda f: f.write(text.encode()))


def read_meta(corpus_dir: str | os.PathLike) -> dict:
    """meta.json of `corpus_dir`, checked: valid JSON, known keys, checksum, field types.
    Raises CorpusError naming the file."""
    path = Path(corpus_dir) / META_FILE
    if not path.is_file():
        if not Path(corpus_dir).is_dir():
            raise CorpusError(f"{corpus_dir}: no such corpus directory")
        raise CorpusError(f"{corpus_dir}: not a prepared corpus (no {META_FILE}); "
                          "make one with `python -m grokcopy.data.prepare`")
    redo = "prepare the corpus again (python -m grokcopy.data.prepare ... --overwrite)"
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path}: not valid JSON ({e}): the file is damaged; {redo}") from None
    if not isinstance(meta, dict):
        raise CorpusError(f"{path}: not a grokcopy meta.json (a JSON {type(meta).__name__}, not an object)")
    unknown = sorted(set(meta) - META_KEYS)
    if unknown:
        raise CorpusError(f"{path}: unknown keys {unknown}: the file is damaged or not grokcopy's; {redo}")
    if "checksum" in meta and meta["checksum"] != meta_checksum(meta):
        raise CorpusError(f"{path}: checksum mismatch: the file was damaged or edited after prepare wrote it; "
                          f"{redo} (to keep a deliberate edit, delete the \"checksum\" line)")
    _check_meta_fields(meta, path)
    return meta


def _check_meta_fields(meta: dict, path: Path) -> None:
    def bad(what: str) -> CorpusError:
        return CorpusError(f"{path}: {what}")

    def is_count(value, minimum: int = 0) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

    if meta.get("format_version") != META_FORMAT_VERSION:
        raise bad(f"format_version {meta.get('format_version')!r} is not {META_FORMAT_VERSION}, "
                  "the version this grokcopy reads")
    if not is_count(meta.get("vocab_size"), 1):
        raise bad(f"vocab_size {meta.get('vocab_size')!r} is not a positive integer")
    tokenizer = meta.get("tokenizer")
    if not isinstance(tokenizer, dict) or tokenizer.get("kind") not in TOKENIZER_KINDS:
        raise bad(f"tokenizer {tokenizer!r} is not one of the kinds {list(TOKENIZER_KINDS)}")
    if not is_count(tokenizer.get("eot_id")) or tokenizer["eot_id"] >= meta["vocab_size"]:
        raise bad(f"tokenizer eot_id {tokenizer.get('eot_id')!r} is not an id below vocab_size {meta['vocab_size']}")
    if tokenizer.get("file") not in (None, TOKENIZER_FILE):
        raise bad(f"tokenizer file {tokenizer.get('file')!r} is not {TOKENIZER_FILE!r}")
    splits = meta.get("splits")
    for split in SPLITS:
        counts = splits.get(split) if isinstance(splits, dict) else None
        if not isinstance(counts, dict) or not all(is_count(counts.get(k)) for k in ("documents", "tokens")):
            raise bad(f"splits.{split} is not {{\"documents\": N, \"tokens\": N}}")
        shards = counts.get("shards", {})
        if not isinstance(shards, dict) or not all(isinstance(v, str) for v in shards.values()):
            raise bad(f"splits.{split}.shards is not {{\"file name\": \"header crc32\"}}")


# ---------------------------------------------------------------------------------------------
# The corpus against its shards


def open_corpus(corpus_dir: str | os.PathLike, *, require_val: bool = True) -> Corpus:
    """Open a prepared corpus and check it before anything trains on it.

    Checks meta.json (read_meta), then that each split's shards exist, agree with meta.json on
    vocab_size (a disagreement would otherwise surface as an IndexError deep in a run), are the
    files prepare wrote (each header's CRC32, which covers the whole file) and hold the recorded
    token count, and that tokenizer.json, if the corpus has one, is the file prepare wrote (CRC32).
    With require_val, a corpus without a val split (`--val-fraction 0`) is an error.

    Returns Corpus(meta, train, val): train and val are TokenDatasets (uint16 or uint32 tokens).
    Raises CorpusError naming the file; a damaged shard raises ShardFormatError.
    """
    corpus_dir = Path(corpus_dir)
    meta = read_meta(corpus_dir)
    meta_path = corpus_dir / META_FILE
    redo = "prepare the corpus again (python -m grokcopy.data.prepare ... --overwrite)"
    datasets = {}
    for split in SPLITS:
        split_dir = corpus_dir / split
        expected = meta["splits"][split]["tokens"]
        if split == "val" and expected == 0:
            if require_val:
                raise CorpusError(f"{corpus_dir}: no val split (it was prepared with --val-fraction 0, or from one "
                                  "document): training needs held-out text; prepare it with --val-fraction > 0")
            datasets[split] = None
            continue
        if not split_dir.is_dir() or not any(split_dir.glob(f"*{SHARD_SUFFIX}")):
            raise CorpusError(f"{split_dir}: missing or without *{SHARD_SUFFIX} shards, though {meta_path} "
                              f"records {expected:,} {split} tokens; {redo}")
        ds = TokenDataset(split_dir)
        if ds.vocab_size != meta["vocab_size"]:
            raise CorpusError(f"{meta_path} says vocab_size {meta['vocab_size']}, but the shards in {split_dir} "
                              f"say {ds.vocab_size}: the two come from different corpora; {redo}")
        recorded = meta["splits"][split].get("shards")  # absent in corpora prepared before it was recorded
        if recorded is not None:
            found = {s.path.name: f"{s.header_crc:08x}" for s in ds.shards}
            if found != recorded:
                odd = sorted(n for n in set(found) | set(recorded) if found.get(n) != recorded.get(n))
                raise CorpusError(f"{split_dir}: the shard files differ from those {meta_path} records "
                                  f"({_listed_names(odd)}: added, removed, replaced or swapped); {redo}")
        if len(ds) != expected:
            raise CorpusError(f"{meta_path} records {expected:,} {split} tokens, but the shards in {split_dir} "
                              f"hold {len(ds):,}: shards were added, removed or replaced; {redo}")
        datasets[split] = ds
    tokenizer = meta["tokenizer"]
    if tokenizer.get("file"):
        path = corpus_dir / tokenizer["file"]
        if not path.is_file():
            raise CorpusError(f"{path}: missing, though {meta_path} names it; {redo}")
        if "crc32" in tokenizer and f"{zlib.crc32(path.read_bytes()):08x}" != tokenizer["crc32"]:
            raise CorpusError(f"{path}: checksum mismatch with {meta_path}: the tokenizer file was damaged "
                              f"or replaced; {redo}")
    return Corpus(meta, datasets["train"], datasets["val"])


# ---------------------------------------------------------------------------------------------
# The corpus's identity: what a run records it trained on


def _identity(vocab_size: int, tokenizer: dict, splits: dict[str, dict[str, str]]) -> dict:
    body = {"vocab_size": vocab_size, "tokenizer": {k: tokenizer.get(k) for k in ("kind", "eot_id", "crc32")},
            "splits": splits}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return {"sha256": hashlib.sha256(canonical.encode()).hexdigest(), **body}


def corpus_identity(corpus: Corpus) -> dict:
    """The corpus by content: each split's shard files with their header CRC32 (which covers the whole
    file through the index and frame CRCs, data/FORMAT.md), the tokenizer's CRC32 and the vocab size,
    and a SHA-256 over all of it. Equal identities: the same tokens in the same order, wherever the
    directory is; re-preparing a path from other text changes it."""
    splits = {split: {s.path.name: f"{s.header_crc:08x}" for s in ds.shards} if ds is not None else {}
              for split, ds in (("train", corpus.train), ("val", corpus.val))}
    return _identity(corpus.meta["vocab_size"], corpus.meta["tokenizer"], splits)


def meta_identity(meta: dict) -> dict | None:
    """corpus_identity from a meta.json alone (a run's recorded data_meta), or None when it predates
    the shard list in meta.json. open_corpus checks the list against the shards, so for a corpus that
    opens, the two agree."""
    splits = meta.get("splits", {})
    if not all(isinstance(splits.get(s), dict) and "shards" in splits[s] for s in SPLITS):
        return None
    return _identity(meta["vocab_size"], meta["tokenizer"], {s: splits[s]["shards"] for s in SPLITS})


def identity_changes(old: dict, new: dict) -> str:
    """What differs between two corpus identities, in a few words naming the files."""
    changed = []
    for split in SPLITS:
        a, b = old["splits"].get(split, {}), new["splits"].get(split, {})
        changed += [f"{split}/{n}" for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]
    if old["tokenizer"] != new["tokenizer"]:
        changed.append(TOKENIZER_FILE)
    if old["vocab_size"] != new["vocab_size"]:
        changed.append(f"vocab_size {old['vocab_size']} -> {new['vocab_size']}")
    return _listed_names(changed) if changed else "the corpus identity"


def _listed_names(names: list[str], at_most: int = 5) -> str:
    return ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


# ---------------------------------------------------------------------------------------------
# Which files grokcopy wrote (prepare deletes only these)


def foreign_entries(corpus_dir: Path) -> list[Path]:
    """Entries of `corpus_dir` that prepare does not write (meta.json, tokenizer.json, train/ and
    val/ holding shard files, and their temp files). Empty for a corpus or an empty directory."""
    found = []
    for entry in sorted(corpus_dir.iterdir()):
        if entry.name in SPLITS and entry.is_dir() and not entry.is_symlink():
            found += [f for f in sorted(entry.iterdir()) if not (_SHARD_FILES.fullmatch(f.name) and _is_file(f))]
        elif not (_TOP_LEVEL_FILES.fullmatch(entry.name) and _is_file(entry)):
            found.append(entry)
    return found


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def remove_corpus_files(corpus_dir: Path) -> list[Path]:
    """Delete what prepare writes in `corpus_dir`, then the directory if that leaves it empty.
    Anything else is left where it is; returns those entries (empty when the directory is gone)."""
    for split in SPLITS:
        split_dir = corpus_dir / split
        if split_dir.is_dir() and not split_dir.is_symlink():
            for f in split_dir.iterdir():
                if _SHARD_FILES.fullmatch(f.name) and _is_file(f):
                    f.unlink()
            _rmdir_if_empty(split_dir)
    for entry in corpus_dir.iterdir():
        if _TOP_LEVEL_FILES.fullmatch(entry.name) and _is_file(entry):
            entry.unlink()
    left = sorted(corpus_dir.iterdir())
    if not left:
        corpus_dir.rmdir()
    return left


def _rmdir_if_empty(path: Path) -> None:
    if not any(path.iterdir()):
        path.rmdir()
