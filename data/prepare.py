"""Tokenise text into train/val token shards.

    python -m grokcopy.data.prepare --input PATH [PATH ...] --out DIR (--tokenizer FILE | --vocab-size N | --bytes)
    python -m grokcopy.data.prepare --default --out DIR

Inputs are text files of any extension, directories (searched recursively; files that look binary
are skipped and counted), and `.jsonl` / `.jsonl.zst` files whose lines hold a `text` field. Each
file or JSON line is one document; documents are joined with an end-of-text token. A seeded,
deterministic `--val-fraction` of documents goes to the `val` split. The output directory holds
`train/` and `val/` shard directories, `meta.json` and, for BPE, `tokenizer.json`; it is built
under a temporary name and renamed into place, so a half-prepared corpus never looks finished.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard
from grokcopy.data.shards import DEFAULT_FRAME_TOKENS, DEFAULT_LEVEL, DEFAULT_SHARD_TOKENS, TokenDataset, write_shards
from tqdm import tqdm

EOT_TOKEN = "<|endoftext|>"
# Names other tokenizers use for their end-of-text token, tried in order when none is given.
KNOWN_EOT_TOKENS = (EOT_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")
DEFAULT_VOCAB_SIZE = 512  # the `tiny` preset's vocabulary (docs/TINY.md)
ENCODE_BATCH_DOCS = 64


class PrepareError(Exception):
    """Bad input to prepare: the message names the argument or file and what is wrong."""


# ---------------------------------------------------------------------------------------------
# Reading documents


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def _jsonl_lines(path: Path) -> Iterator[str]:
    if path.name.endswith(".zst"):
        with open(path, "rb") as raw:
            stream = zstandard.ZstdDecompressor().stream_reader(raw)
            yield from io.TextIOWrapper(stream, encoding="utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            yield from f


def _jsonl_documents(path: Path) -> Iterator[str]:
    for line_no, line in enumerate(_jsonl_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrepareError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise PrepareError(f"{path}:{line_no}: expected an object with a string field 'text'")
        yield record["text"]


@dataclass
class Sources:
    """The input files, expanded and sorted, and what was skipped on the way."""

    files: list[Path] = field(default_factory=list)
    skipped_binary: int = 0


def collect_sources(paths: list[str | os.PathLike], pattern: str = "*") -> Sources:
    """Expand files and directories (recursively, sorted) into the list of input files."""
    sources = Sources()
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(q for q in p.rglob(pattern) if q.is_file()):
                if _is_jsonl(f) or not _looks_binary(f):
                    sources.files.append(f)
                else:
                    sources.skipped_binary += 1
        elif p.is_file():
            sources.files.append(p)
        else:
            raise PrepareError(f"--input {p}: no such file or directory")
    return sources


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.zst"))


def iter_documents(files: list[Path]) -> Iterator[str]:
    """Each text file is one document; each line of a .jsonl(.zst) file is one. Empty ones are skipped."""
    for f in files:
        if _is_jsonl(f):
            yield from filter(None, _jsonl_documents(f))
        else:
            # Undecodable bytes become U+FFFD rather than failing the whole corpus on one file.
            text = f.read_text(encoding="utf-8", errors="replace")
            if text:
                yield text


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
    """Encodes documents to token ids; `hf` is the HF tokenizers object (None for raw bytes)."""

    kind: str  # "bytes" | "bpe" | "file"
    vocab_size: int
    eot_id: int
    hf: object | None = None

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self.hf is None:
            return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for t in texts]
        # tokenizers encodes a batch on all cores (Rayon), which is how prepare uses both CPUs.
        return [np.asarray(e.ids, dtype=np.uint32) for e in self.hf.encode_batch(texts, add_special_tokens=False)]


def bytes_tokenizer() -> Tokenizer:
    """Raw UTF-8 bytes 0..255 plus <|endoftext|> = 256: vocab 257."""
    return Tokenizer("bytes", 257, 256)


def train_bpe(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) with <|endoftext|> as id 0."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise PrepareError(
            f"--vocab-size {vocab_size} does not fit: a byte-level BPE needs at least "
            f"{len(alphabet) + 1} tokens (256 bytes + {EOT_TOKEN})"
        )
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
            return Tokenizer("file", vocab_size, eot_id, tok)
    raise PrepareError(
        f"--tokenizer {path}: no end-of-text token among {list(candidates)}; name one with --eot-token"
    )


# ---------------------------------------------------------------------------------------------
# The pipeline


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
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenise `sources` into `out_dir` and return the meta.json contents.

    Give either a ready `tokenizer` or `bpe_vocab_size` (a BPE trained on the train documents only,
    so val stays held out).
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    if (out_dir / "meta.json").exists() and not force:
        raise PrepareError(f"--out {out_dir} already holds a prepared corpus; pass --force to rebuild it")
    if not sources.files:
        raise PrepareError("the inputs hold no files to read (empty directory, or only binary files)")
    # Documents are streamed, never all held at once: one pass counts them (the split needs the
    # count), then one pass per split tokenises and writes; a BPE trains on a pass of its own.
    n_docs, text_bytes = 0, 0
    for doc in iter_documents(sources.files):
        n_docs += 1
        text_bytes += len(doc.encode("utf-8"))
    if n_docs == 0:
        raise PrepareError(f"the inputs ({len(sources.files)} files) hold no text: every document is empty")
    is_val = split_documents(n_docs, val_fraction, seed)

    def split_docs(want_val: bool) -> Iterator[str]:
        return (d for d, v in zip(iter_documents(sources.files), is_val, strict=True) if v == want_val)

    if tokenizer is None:
        tokenizer = train_bpe(split_docs(False), bpe_vocab_size)

    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        meta_splits = {}
        with tqdm(total=n_docs, unit="doc", desc="tokenising", disable=not progress) as bar:
            for split, want_val in (("train", False), ("val", True)):
                write_shards(_encode(split_docs(want_val), tokenizer, bar), tmp_dir / split,
                             tokenizer.vocab_size, eot=tokenizer.eot_id, shard_tokens=shard_tokens,
                             frame_tokens=frame_tokens, level=level)
                n_split_tokens = len(TokenDataset(tmp_dir / split)) if any((tmp_dir / split).iterdir()) else 0
                meta_splits[split] = {"documents": int((is_val == want_val).sum()), "tokens": n_split_tokens}
        if tokenizer.hf is not None:
            tokenizer.hf.save(str(tmp_dir / "tokenizer.json"))
        meta = {
            "format_version": 1,
            "source": description or f"{len(sources.files)} input files",
            "input_files": len(sources.files),
            "skipped_binary_files": sources.skipped_binary,
            "tokenizer": {
                "kind": tokenizer.kind,
                "file": "tokenizer.json" if tokenizer.hf is not None else None,
                "eot_id": tokenizer.eot_id,
            },
            "vocab_size": tokenizer.vocab_size,
            "val_fraction": val_fraction,
            "seed": seed,
            "splits": meta_splits,
            "text_bytes": text_bytes,
        }
        (tmp_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    meta["seconds"] = time.time() - t0
    meta["disk_bytes"] = sum(f.stat().st_size for f in out_dir.rglob("*.tok"))
    return meta


def _encode(documents: Iterator[str], tokenizer: Tokenizer, bar: tqdm) -> Iterator[np.ndarray]:
    """Tokenise a stream of documents in batches (so HF tokenizers can spread a batch over cores)."""
    batch: list[str] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == ENCODE_BATCH_DOCS:
            yield from tokenizer.encode_batch(batch)
            bar.update(len(batch))
            batch = []
    if batch:
        yield from tokenizer.encode_batch(batch)
        bar.update(len(batch))


def open_split(corpus_dir: str | os.PathLike, split: str) -> TokenDataset:
    """The `split` ("train" or "val") of a prepared corpus directory."""
    path = Path(corpus_dir) / split
    if not (Path(corpus_dir) / "meta.json").is_file():
        raise FileNotFoundError(f"{corpus_dir}: no meta.json here; prepare the corpus with "
                                "`python -m grokcopy.data.prepare`")
    return TokenDataset(path)


def summary(meta: dict) -> str:
    """The closing report: documents, tokens per split, bytes on disk, compression, time."""
    splits = meta["splits"]
    tokens = sum(s["tokens"] for s in splits.values())
    itemsize = 2 if meta["vocab_size"] <= 1 << 16 else 4
    lines = [
        f"source: {meta['source']}",
        f"tokenizer: {meta['tokenizer']['kind']} (vocab {meta['vocab_size']})",
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
    return "\n".join(lines)


def default_description() -> str:
    v = sys.version_info
    return f"Python {v.major}.{v.minor} standard library .py files ({sysconfig.get_paths()['stdlib']})"


def default_corpus(out_dir: str | os.PathLike, *, bytes_level: bool = False,
                   vocab_size: int = DEFAULT_VOCAB_SIZE, progress: bool = True) -> dict:
    """Prepare the embedded default corpus (this Python's standard library) into `out_dir`."""
    return prepare(default_sources(), out_dir, description=default_description(), progress=progress,
                   tokenizer=bytes_tokenizer() if bytes_level else None, bpe_vocab_size=vocab_size)


def default_corpus_dir(bytes_level: bool = False, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Where the default corpus lives: $GROKCOPY_DATA (default ~/.cache/grokcopy), named by tokenizer."""
    root = Path(os.environ.get("GROKCOPY_DATA", Path.home() / ".cache" / "grokcopy")).expanduser()
    v = sys.version_info
    return root / f"stdlib-py{v.major}{v.minor}-{'bytes' if bytes_level else f'bpe{vocab_size}'}"


def ensure_default_corpus(bytes_level: bool = False, vocab_size: int = DEFAULT_VOCAB_SIZE,
                          progress: bool = True) -> Path:
    """The default corpus directory, prepared first if it is not there yet."""
    out = default_corpus_dir(bytes_level, vocab_size)
    if not (out / "meta.json").is_file():
        meta = default_corpus(out, bytes_level=bytes_level, vocab_size=vocab_size, progress=progress)
        print(summary(meta))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grokcopy.data.prepare", description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="text files, directories, .jsonl(.zst) files")
    src.add_argument("--default", action="store_true", help="the Python standard library's own sources")
    parser.add_argument("--out", required=True, help="output corpus directory")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", metavar="FILE", help="an existing HF tokenizers JSON file")
    tok.add_argument("--bytes", action="store_true", help="raw bytes: vocab 256 + <|endoftext|>")
    parser.add_argument("--vocab-size", type=int, help="train a byte-level BPE of this size "
                        "(with --tokenizer: the largest vocab the tokenizer may have)")
    parser.add_argument("--eot-token", help="end-of-text token of --tokenizer (default: found by name)")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame-tokens", type=int, default=DEFAULT_FRAME_TOKENS)
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS)
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd compression level")
    parser.add_argument("--force", action="store_true", help="rebuild an existing corpus")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.tokenizer:
            tokenizer = load_tokenizer(Path(args.tokenizer), args.eot_token, args.vocab_size)
        elif args.bytes:
            tokenizer = bytes_tokenizer()
        elif args.vocab_size is None and not args.default:
            parser.error("choose a tokenizer: --tokenizer FILE, --vocab-size N or --bytes")
        else:
            tokenizer = None
        if args.default:
            sources, description = default_sources(), default_description()
        else:
            sources = collect_sources(args.input)
            description = ", ".join(args.input)
        meta = prepare(
            sources, args.out, tokenizer=tokenizer, bpe_vocab_size=args.vocab_size or DEFAULT_VOCAB_SIZE,
            val_fraction=args.val_fraction, seed=args.seed, description=description,
            shard_tokens=args.shard_tokens, frame_tokens=args.frame_tokens, level=args.level,
            force=args.force, progress=not args.quiet,
        )
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary(meta))


if __name__ == "__main__":
    main()
