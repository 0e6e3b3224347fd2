"""A corpus's documents, read from the inputs `data.prepare` accepts and streamed in bounded pieces.

Inputs are files and directories (searched recursively, in sorted order), in three kinds:
- text, any extension: one file is one document. `NAME.gz` and `NAME.zst` are decompressed first.
- JSON lines (`.jsonl`, and compressed `.jsonl.gz`, `.jsonl.zst`, `.json.gz`, `.json.zst`, the last
  two being Dolma's layout): one document per line, the string field `text_field`. A plain `.json`
  file is a text document, as it is in a source tree.
- parquet (`.parquet`, needs pyarrow): one document per row of the string column `text_field`,
  read one row batch of one row group at a time, never the whole file.

Text that looks binary (a NUL byte in its first 8 KiB, after decompression) is skipped, whether it
was found in a directory or named directly, and the skipped files are reported by name. So is every
grokcopy output inside the inputs (a corpus, a run, an HF export, recognised by grokcopy/ownership.py)
and the directory being written (`exclude`, prepare's --out): a corpus is never read back as text.

No document is held whole: each one arrives as pieces (`iter_pieces`) of at most `piece_chars`
characters, so a 47 MB one-line document costs what a 64 KiB one does. A text piece is cut only
just before a space, tab, CR or LF that follows a non-space character; a byte-level BPE's
pre-tokeniser (the GPT-2 pattern) always splits there, so encoding the pieces one by one gives
exactly the tokens of the whole document (tested). Only a run of `piece_chars` characters without
such a place is cut where it stands.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from grokcopy.data.errors import PrepareError
from grokcopy.ownership import KIND_NAMES, output_kind

BLOCK_BYTES = 1 << 20  # bytes read from a file at a time
PIECE_CHARS = 1 << 16  # longest piece of text handed to a tokenizer at once
BINARY_SNIFF_BYTES = 8192
PARQUET_BATCH_ROWS = 1024
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
# Where a piece may end: before a space, tab, CR or LF that follows a non-space character. Python's
# `\S` excludes a superset of Unicode White_Space, so the character before the cut is not
# whitespace for the tokenizer's regex either.
CUT_BEFORE = re.compile(r"(?<=\S)[ \t\r\n]")
_CUT_SEARCH_CHARS = 4096


def is_jsonl(path: Path) -> bool:
    """Whether `path` is read as JSON lines (by its name)."""
    return path.name.endswith(JSONL_SUFFIXES)


def is_parquet(path: Path) -> bool:
    return path.name.endswith(".parquet")


def _compression(path: Path) -> str | None:
    return "gz" if path.name.endswith(".gz") else "zst" if path.name.endswith(".zst") else None


# ---------------------------------------------------------------------------------------------
# Decompressed byte streams


class _BlockReader(io.RawIOBase):
    """A readable raw stream over an iterator of byte blocks (so io.BufferedReader can give lines)."""

    def __init__(self, blocks: Iterator[bytes]):
        self._blocks = blocks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            self._pending = next(self._blocks, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _zstd_blocks(raw: BinaryIO, path: Path) -> Iterator[bytes]:
    """The decompressed content of a .zst file of one or more frames. zstandard's stream_reader
    returns a truncated file's first part without a word, so frame ends are checked here."""
    dctx = zstandard.ZstdDecompressor()
    frame = dctx.decompressobj()
    in_frame = False
    while chunk := raw.read(BLOCK_BYTES):
        while chunk:
            out = frame.decompress(chunk)
            in_frame = True
            if out:
                yield out
            if frame.eof:  # a frame ended; the next one (if any) starts in unused_data
                chunk, frame, in_frame = frame.unused_data, dctx.decompressobj(), False
            else:
                chunk = b""
    if in_frame:
        raise PrepareError(f"{path}: truncated: the file ends inside a zstd frame")


@contextmanager
def open_decompressed(path: Path) -> Iterator[BinaryIO]:
    """A buffered binary reader of `path`'s content, decompressed for .gz and .zst."""
    kind = _compression(path)
    with open(path, "rb") as raw:
        if kind == "gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield f
        elif kind == "zst":
            yield io.BufferedReader(_BlockReader(_zstd_blocks(raw, path)), BLOCK_BYTES)
        else:
            yield raw


@contextmanager
def _decompression_errors(path: Path, where: Callable[[], str] | None = None) -> Iterator[None]:
    """Turn a corrupt or truncated .gz / .zst into a PrepareError naming the file (and line)."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as e:
        at = f" ({where()})" if where else ""
        raise PrepareError(f"{path}: cannot decompress{at}: {e}") from None


def looks_binary(path: Path) -> bool:
    """Whether the (decompressed) start of `path` holds a NUL byte, as text never does."""
    with open_decompressed(path) as f, _decompression_errors(path):
        return b"\x00" in f.read(BINARY_SNIFF_BYTES)


# ---------------------------------------------------------------------------------------------
# Finding the input files


@dataclass
class Sources:
    """The input files, expanded and sorted, and what was skipped on the way: binary files, and
    directories that are grokcopy's own outputs (with why)."""

    files: list[Path] = field(default_factory=list)
    skipped_binary: int = 0
    skipped: list[Path] = field(default_factory=list)
    excluded: list[tuple[Path, str]] = field(default_factory=list)


def _excluded_dir(folder: Path, exclude: list[Path]) -> str | None:
    """Why the directory `folder` is not read as input, or None."""
    resolved = folder.resolve()
    if any(resolved == e for e in exclude):
        return "the output directory"
    kind = output_kind(folder)
    return KIND_NAMES[kind] if kind else None


def collect_sources(paths: list[str | os.PathLike], pattern: str = "*",
                    exclude: list[str | os.PathLike] = ()) -> Sources:
    """Expand files and directories (recursively, sorted) into the list of input files.

    Text files that look binary are skipped, and listed in `skipped`, both when a directory scan
    finds them and when they are named directly. Directories in `exclude` and grokcopy outputs (a
    corpus, a run, an export) are not read, wherever they are among the inputs, and are listed in
    `excluded`. A missing path is a PrepareError.
    """
    sources = Sources()
    exclude = [Path(e).resolve() for e in exclude]
    why: dict[Path, str | None] = {}  # directory -> why it is excluded (None: it is read), cached

    def excluded_by(f: Path, top: Path | None) -> Path | None:
        """The excluded directory `f` lies in (searched from `top`, or from the root for a named file)."""
        folders = [a for a in f.parents if top is None or a == top or top in a.parents][::-1]
        for folder in folders:
            if folder not in why:
                why[folder] = _excluded_dir(folder, exclude)
                if why[folder]:
                    sources.excluded.append((folder, why[folder]))
            if why[folder]:
                return folder
        return None

    taken: set[Path] = set()  # a file named twice (or a directory and a file in it) is read once: a
    # document in the corpus twice can land in train and in val, and the val loss is then on training text

    def take(f: Path) -> None:
        if f.resolve() in taken:
            return
        taken.add(f.resolve())
        if is_jsonl(f) or is_parquet(f) or not looks_binary(f):
            sources.files.append(f)
        else:
            sources.skipped.append(f)
            sources.skipped_binary += 1

    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(q for q in p.rglob(pattern) if q.is_file()):
                if excluded_by(f, p) is None:
                    take(f)
        elif p.is_file():
            if excluded_by(p.absolute(), None) is None:
                take(p)
        else:
            raise PrepareError(f"--input {p}: no such file or directory")
    return sources


# ---------------------------------------------------------------------------------------------
# Records: (position, text) of each document of a JSON-lines or parquet file


def _jsonl_texts(path: Path, text_field: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of each line of a JSON-lines file; blank lines are skipped."""
    line_no = 0
    with open_decompressed(path) as f, _decompression_errors(path, lambda: f"after line {line_no}"):
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise PrepareError(f"{path}:{line_no}: invalid UTF-8 (byte {e.start} of the line); "
                                   "fix or remove that line") from None
            except json.JSONDecodeError as e:
                raise PrepareError(f"{path}:{line_no}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                fields = f" (its fields: {sorted(record)[:10]}; choose one with --text-field)" \
                    if isinstance(record, dict) else ""
                raise PrepareError(f"{path}:{line_no}: expected an object with a string field "
                                   f"'{text_field}'{fields}")
            text = record[text_field]
            _check_encodable(text, lambda: f"{path}:{line_no}: field '{text_field}'")  # noqa: B023
            yield line_no, text


def _parquet_texts(path: Path, text_field: str) -> Iterator[tuple[int, str]]:
    """(row index from 0, text) of each row of a parquet file, a row batch of one row group at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PrepareError(f"{path}: reading parquet needs pyarrow (pip install 'pyarrow>=14')") from None
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise PrepareError(f"{path}: not a readable parquet file ({e})") from None
    with parquet:
        schema = parquet.schema_arrow
        if text_field not in schema.names:
            raise PrepareError(f"{path}: no column '{text_field}' (its columns: {schema.names[:10]}); "
                               "choose one with --text-field")
        kind = schema.field(text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise PrepareError(f"{path}: column '{text_field}' holds {kind}, not strings")
        row = 0
        for group in range(parquet.num_row_groups):
            try:
                batches = list(_parquet_batches(parquet, group, text_field))
            except (pa.ArrowException, OSError) as e:
                raise PrepareError(f"{path}: row group {group} (rows from {row}) cannot be read ({e})") from None
            for texts in batches:
                for i, text in enumerate(texts):
                    if text is None:
                        raise PrepareError(f"{path}: row {row + i} (counting from 0): '{text_field}' is null")
                    _check_encodable(text, lambda: f"{path}: row {row + i}: '{text_field}'")  # noqa: B023
                    yield row + i, text
                row += len(texts)


def _parquet_batches(parquet, group: int, text_field: str) -> Iterator[list[str | None]]:
    # One row group's column is decoded at a time (parquet's unit of reading): what a file holds
    # in one row group is the most held in memory at once.
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=[text_field]):
        yield batch.column(0).to_pylist()


def _check_encodable(text: str, where: Callable[[], str]) -> None:
    """JSON escapes can spell unpaired surrogates, which have no UTF-8 form: name where one is."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PrepareError(f"{where()} holds an unpaired surrogate {text[e.start]!r} "
                               f"at character {e.start}: not text") from None


def _records(path: Path, text_field: str) -> Iterator[tuple[int, str]]:
    return _parquet_texts(path, text_field) if is_parquet(path) else _jsonl_texts(path, text_field)


# ---------------------------------------------------------------------------------------------
# Documents as pieces


@dataclass
class ReadStats:
    """What reading changed on the way: undecodable bytes in text files replaced by U+FFFD (only
    for tokenizers of text; raw bytes are stored as they are)."""

    replaced_bytes: int = 0
    files_with_replacements: list[str] = field(default_factory=list)


_replaced_bytes = 0


def _count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    # what errors="replace" does, counting the bytes it replaces
    global _replaced_bytes
    _replaced_bytes += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("grokcopy-count-replace", _count_and_replace)


def count_documents(files: list[Path], text_field: str = "text") -> int:
    """How many non-empty documents `files` hold (what iter_pieces will yield documents of)."""
    n = 0
    for f in files:
        if is_jsonl(f) or is_parquet(f):
            n += sum(1 for _, text in _records(f, text_field) if text)
        else:
            with open_decompressed(f) as stream, _decompression_errors(f):
                n += bool(stream.read(1))
    return n


def iter_pieces(
    files: list[Path],
    *,
    text_field: str = "text",
    raw: bool = False,
    piece_chars: int = PIECE_CHARS,
    stats: ReadStats | None = None,
) -> Iterator[tuple[str | bytes, bool]]:
    """Every non-empty document of `files`, in order, as (piece, is_last_piece_of_its_document).

    raw=False: pieces are str of at most `piece_chars` characters, cut as the module docstring says;
    text files are read with universal newlines (CRLF and CR become LF) and their undecodable
    bytes become U+FFFD, counted in `stats`. raw=True: pieces are bytes
    of at most BLOCK_BYTES, a text file's bytes exactly as stored, JSON and parquet text as UTF-8.
    """
    global _replaced_bytes
    for f in files:
        if is_jsonl(f) or is_parquet(f):
            for _, text in _records(f, text_field):
                if text:
                    if raw:
                        yield from _mark_last(_byte_blocks(text.encode("utf-8")))
                    else:
                        yield from _mark_last(cut_pieces([text], piece_chars))
            continue
        with open_decompressed(f) as stream, _decompression_errors(f):
            blocks = iter(lambda: stream.read(BLOCK_BYTES), b"")
            if raw:
                yield from _mark_last(blocks)
                continue
            before = _replaced_bytes
            # Universal newlines, as Python reads text (and as prepare always read it): CRLF and
            # CR become LF, also across block boundaries.
            decoder = io.IncrementalNewlineDecoder(
                codecs.getincrementaldecoder("utf-8")(errors="grokcopy-count-replace"), translate=True)
            texts = (decoder.decode(block) for block in blocks)
            yield from _mark_last(cut_pieces(_with_tail(texts, decoder), piece_chars))
            if stats is not None and _replaced_bytes > before:
                stats.replaced_bytes += _replaced_bytes - before
                stats.files_with_replacements.append(str(f))


def _with_tail(texts: Iterator[str], decoder: io.IncrementalNewlineDecoder) -> Iterator[str]:
    yield from texts
    yield decoder.decode(b"", final=True)  # bytes of an incomplete last character, replaced


def _byte_blocks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), BLOCK_BYTES):
        yield data[start : start + BLOCK_BYTES]


def _mark_last(pieces: Iterable[str | bytes]) -> Iterator[tuple[str | bytes, bool]]:
    """(piece, is_last) for the non-empty pieces of one document."""
    previous = None
    for piece in pieces:
        if piece:
            if previous is not None:
                yield previous, False
            previous = piece
    if previous is not None:
        yield previous, True


def cut_pieces(texts: Iterable[str], piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """The concatenation of `texts` as pieces of at most `piece_chars` characters, each cut just
    before a space, tab, CR or LF that follows a non-space character when there is one (see the
    module docstring). The cuts depend only on the text, not on how `texts` divides it."""
    rest = ""
    for text in texts:
        text = rest + text if rest else text
        start = 0
        while len(text) - start > piece_chars:
            end = _cut_point(text, start, piece_chars)
            yield text[start:end]
            start = end
        rest = text[start:]
    if rest:
        yield rest


def _cut_point(text: str, start: int, piece_chars: int) -> int:
    """The last cut place in (start, start + piece_chars], searched backwards a window at a time;
    start + piece_chars if there is none."""
    hi = start + piece_chars
    while hi > start + 1:
        lo = max(start + 1, hi - _CUT_SEARCH_CHARS)
        last = None
        for match in CUT_BEFORE.finditer(text, lo, hi + 1):
            last = match.start()
        if last is not None and last > start:
            return last
        hi = lo
    return start + piece_chars

