"""Token shards: zstd-compressed frames of tokens behind a checksummed header and frame index.

The byte layout is documented in data/FORMAT.md; this file is its only implementation.
`ShardWriter` (and `write_shards` over it) cuts a token stream into shard files; `TokenDataset`
memory-maps them and decompresses only the frames a slice touches, keeping a few recent frames
decompressed.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import zstandard

from grokcopy.data.atomic import atomic_file
from grokcopy.data.errors import DataError

MAGIC = b"GRKTOKS\x00"
FORMAT_VERSION = 1
SHARD_SUFFIX = ".tok"

# Little-endian header, 64 bytes; the last 4 bytes are a CRC32 of the first 60.
#   magic, version, itemsize, 3 reserved bytes, vocab_size, frame_tokens,
#   token_count, n_frames, index_offset, index_crc32, 8 reserved bytes
HEADER = struct.Struct("<8sIB3xIIQQQI8x")
HEADER_SIZE = HEADER.size + 4
# One index entry per frame: offset of its payload, compressed size, CRC32 of the compressed payload.
# With the header CRC and the index CRC (in the header), every byte of a shard is under a checksum;
# zstd's own content checksum inside each frame then verifies the decompression itself.
INDEX_ENTRY = np.dtype([("offset", "<u8"), ("size", "<u4"), ("crc32", "<u4")])

DEFAULT_SHARD_TOKENS = 1 << 26  # 64M tokens (128 MiB of uint16 before compression)
DEFAULT_FRAME_TOKENS = 1 << 13  # 8192: a 1025-token window touches one or two frames
DEFAULT_LEVEL = 9
# The writer's bounds: a frame is decompressed whole into memory by every reader, and its payload
# size is a uint32 field, so frames stay far below 4 GiB; zstd's levels run from 1 to 22.
MAX_FRAME_TOKENS = 1 << 24
MIN_LEVEL, MAX_LEVEL = 1, zstandard.MAX_COMPRESSION_LEVEL
# Frames the writer compresses at once, on all cores: a few MB of tokens held, not a shard.
COMPRESS_BATCH_FRAMES = 32


class ShardFormatError(DataError):
    """A shard file is malformed: the message names the file, the frame if any, and the fault."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id below `vocab_size`: uint16 up to 65536, else uint32."""
    if not 0 < vocab_size <= 1 << 32:
        raise ValueError(f"vocab_size must be in [1, 2**32], got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# ---------------------------------------------------------------------------------------------
# Writing


def _encode_shard(tokens: np.ndarray, vocab_size: int, frame_tokens: int, level: int) -> list[bytes]:
    """Bytes of one shard file holding `tokens` (already of the shard dtype), as a list of chunks.
    The reference for ShardWriter's streamed output, and what tests build bad shards with."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    n_frames = -(-len(tokens) // frame_tokens)
    index = np.zeros(n_frames, dtype=INDEX_ENTRY)
    payloads = []
    offset = HEADER_SIZE
    for i in range(n_frames):
        raw = tokens[i * frame_tokens : (i + 1) * frame_tokens].tobytes()
        payload = compressor.compress(raw)
        index[i] = (offset, len(payload), zlib.crc32(payload))
        payloads.append(payload)
        offset += len(payload)
    index_bytes = index.tobytes()
    header = _pack_header(tokens.dtype.itemsize, vocab_size, frame_tokens, len(tokens), n_frames, offset, index_bytes)
    return [header, *payloads, index_bytes]


def _pack_header(itemsize: int, vocab_size: int, frame_tokens: int, n_tokens: int, n_frames: int,
                 index_offset: int, index_bytes: bytes) -> bytes:
    """The 64-byte header, its CRC32 included."""
    header = HEADER.pack(MAGIC, FORMAT_VERSION, itemsize, vocab_size, frame_tokens, n_tokens, n_frames,
                         index_offset, zlib.crc32(index_bytes))
    return header + struct.pack("<I", zlib.crc32(header))


class ShardWriter:
    """Writes one token stream into shard files `out_dir/{prefix}-00000.tok`, ... a frame at a time.

    Memory stays at COMPRESS_BATCH_FRAMES frames of tokens plus the frame index, whatever the shard
    size: complete frames are compressed (in parallel) and appended to the shard's temp file, and
    the header (which needs the totals) is written last. Each shard file appears atomically (see
    data.atomic.atomic_file) when it is full or at close(); after an exception inside the `with`
    block, the unfinished shard's temp file is deleted (finished shards stay).

        with ShardWriter(out_dir, vocab_size) as writer:
            writer.write(tokens)           # 1-D integer array, every id in [0, vocab_size)
        writer.paths                       # the shard files written

    Args:
        out_dir: directory to write into (created if missing).
        vocab_size: number of token ids; decides the stored dtype (uint16 if <= 65536, else uint32).
        shard_tokens: tokens per shard file (the last one is shorter).
        frame_tokens: tokens per independently compressed zstd frame, counted from the shard's start
            (the last frame of each shard may be shorter).
        level: zstd compression level.
        prefix: shard file name prefix.
    """

    def __init__(self, out_dir: str | os.PathLike, vocab_size: int, *, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 frame_tokens: int = DEFAULT_FRAME_TOKENS, level: int = DEFAULT_LEVEL, prefix: str = "shard"):
        self.dtype = token_dtype(vocab_size)
        if shard_tokens < 1 or not 1 <= frame_tokens <= MAX_FRAME_TOKENS:
            raise ValueError(f"shard_tokens must be >= 1 and frame_tokens in [1, {MAX_FRAME_TOKENS}], "
                             f"got {shard_tokens}, {frame_tokens}")
        if not MIN_LEVEL <= level <= MAX_LEVEL:
            raise ValueError(f"zstd level must be in [{MIN_LEVEL}, {MAX_LEVEL}], got {level}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.vocab_size, self.shard_tokens, self.frame_tokens = vocab_size, shard_tokens, frame_tokens
        self.prefix = prefix
        self.paths: list[Path] = []
        self.header_crcs: list[int] = []  # header CRC32 of each shard written: covers its whole content
        self.n_tokens = 0
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._pending: list[np.ndarray] = []  # tokens not yet in a frame
        self._n_pending = 0
        self._shard = None  # the open atomic_file context of the shard being written
        self._file: BinaryIO | None = None
        self._index: list[tuple[int, int, int]] = []
        self._shard_filled = 0  # tokens of the current shard already in frames

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.close()
        elif self._shard is not None:
            self._shard.__exit__(kind, error, traceback)  # deletes the temp file
            self._shard = self._file = None

    def write(self, tokens: np.ndarray) -> None:
        """Append `tokens` (a 1-D integer array, every id in [0, vocab_size)) to the stream."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"expected a 1-D integer array, got {tokens.dtype}{tokens.shape}")
        if not len(tokens):
            return
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            bad = tokens[(tokens < 0) | (tokens >= self.vocab_size)][0]
            raise ValueError(f"token {bad} is outside the vocabulary [0, {self.vocab_size})")
        self._pending.append(tokens.astype(self.dtype, copy=False))
        self._n_pending += len(tokens)
        self.n_tokens += len(tokens)
        if self._n_pending >= COMPRESS_BATCH_FRAMES * self.frame_tokens:
            self._write_frames(final=False)

    def close(self) -> list[Path]:
        """Write what is pending and finish the last shard; returns the shard paths."""
        if self._n_pending:
            self._write_frames(final=True)
        if self._shard is not None:
            self._finish_shard()
        return self.paths

    def _write_frames(self, final: bool) -> None:
        """Compress and append every complete frame pending (and, if final, the incomplete rest)."""
        joined = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        frames, start, filled = [], 0, self._shard_filled
        while start < len(joined):
            size = min(self.frame_tokens, self.shard_tokens - filled)  # frames restart at each shard
            if len(joined) - start < size and not final:
                break
            frames.append(joined[start : start + size])
            start += len(frames[-1])
            filled = (filled + len(frames[-1])) % self.shard_tokens
        for frame, payload in zip(frames, self._compress(frames), strict=True):
            self._append_frame(len(frame), payload)
        rest = joined[start:]
        self._pending, self._n_pending = ([rest], len(rest)) if len(rest) else ([], 0)

    def _compress(self, frames: list[np.ndarray]) -> list[bytes]:
        """zstd frames of each token array; several at once on all cores (the same bytes as one by one)."""
        if len(frames) >= 2:
            try:
                compressed = self._compressor.multi_compress_to_buffer([f.tobytes() for f in frames], threads=-1)
                return [compressed[i].tobytes() for i in range(len(frames))]
            except NotImplementedError:  # zstandard's CFFI backend (PyPy) has no multi-threaded batch
                pass
        return [self._compressor.compress(f.tobytes()) for f in frames]

    def _append_frame(self, n_tokens: int, payload: bytes) -> None:
        if self._shard is None:
            path = self.out_dir / f"{self.prefix}-{len(self.paths):05d}{SHARD_SUFFIX}"
            self._shard = atomic_file(path)
            self._file = self._shard.__enter__()
            self._file.write(bytes(HEADER_SIZE))  # the header is written last, when the totals are known
            self._shard_path, self._offset, self._index, self._shard_filled = path, HEADER_SIZE, [], 0
        self._file.write(payload)
        self._index.append((self._offset, len(payload), zlib.crc32(payload)))
        self._offset += len(payload)
        self._shard_filled += n_tokens
        if self._shard_filled == self.shard_tokens:
            self._finish_shard()

    def _finish_shard(self) -> None:
        index_bytes = np.array(self._index, dtype=INDEX_ENTRY).tobytes()
        self._file.write(index_bytes)
        self._file.seek(0)
        header = _pack_header(self.dtype.itemsize, self.vocab_size, self.frame_tokens, self._shard_filled,
                              len(self._index), self._offset, index_bytes)
        self._file.write(header)
        self.header_crcs.append(struct.unpack("<I", header[HEADER.size :])[0])
        shard, self._shard, self._file, self._shard_filled = self._shard, None, None, 0
        shard.__exit__(None, None, None)  # fsync, rename into place
        self.paths.append(self._shard_path)


def write_shards(
    token_arrays: Iterable[np.ndarray],
    out_dir: str | os.PathLike,
    vocab_size: int,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    frame_tokens: int = DEFAULT_FRAME_TOKENS,
    level: int = DEFAULT_LEVEL,
    eot: int | None = None,
    prefix: str = "shard",
) -> list[Path]:
    """Concatenate `token_arrays` into shard files `out_dir/{prefix}-00000.tok`, ... and return their paths.

    Args:
        token_arrays: 1-D integer numpy arrays (documents), each < vocab_size and >= 0.
        out_dir: directory to write into (created if missing).
        vocab_size: number of token ids; decides the stored dtype (uint16 if <= 65536, else uint32).
        shard_tokens: tokens per shard file (the last one is shorter).
        frame_tokens: tokens per independently compressed zstd frame (the last one is shorter).
        level: zstd compression level.
        eot: if given, this token id is appended after every document.
        prefix: shard file name prefix, so several splits can share a directory.

    Every shard is written atomically (temp file, fsync, rename); see ShardWriter.
    """
    if eot is not None and not 0 <= eot < vocab_size:
        raise ValueError(f"eot token {eot} is outside the vocabulary [0, {vocab_size})")
    eot_array = None if eot is None else np.array([eot])
    with ShardWriter(out_dir, vocab_size, shard_tokens=shard_tokens, frame_tokens=frame_tokens, level=level,
                     prefix=prefix) as writer:
        for doc_index, doc in enumerate(token_arrays):
            try:
                writer.write(doc)
            except ValueError as e:
                raise ValueError(f"document {doc_index}: {e}") from None
            if eot_array is not None:
                writer.write(eot_array)
    return writer.paths


# ---------------------------------------------------------------------------------------------
# Reading


class _Shard:
    """One shard file: validated header and index; frames decompressed on demand."""

    def __init__(self, path: Path):
        self.path = path
        self._mmap = None  # opened lazily per process, so a dataset survives fork
        self._pid = None
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
        if len(head) < HEADER_SIZE:
            raise self.error(f"truncated: {size} bytes, shorter than the {HEADER_SIZE}-byte header")
        if head[:8] != MAGIC:
            raise self.error(f"bad magic {head[:8]!r}, expected {MAGIC!r}: not a grokcopy token shard")
        (crc,) = struct.unpack("<I", head[HEADER.size :])
        self.header_crc = crc  # through the index CRC and the frame CRCs, a checksum of the whole file
        if zlib.crc32(head[: HEADER.size]) != crc:
            raise self.error("header checksum mismatch: the header is corrupted")
        (_, version, itemsize, self.vocab_size, self.frame_tokens, self.n_tokens,
         n_frames, index_offset, index_crc) = HEADER.unpack(head[: HEADER.size])
        if version != FORMAT_VERSION:
            raise self.error(f"format version {version} is not supported (this reader knows {FORMAT_VERSION})")
        if itemsize not in (2, 4) or np.dtype(f"<u{itemsize}") != token_dtype(self.vocab_size):
            raise self.error(f"token size {itemsize} bytes does not match vocab_size {self.vocab_size}")
        self.dtype = np.dtype(f"<u{itemsize}")
        if self.frame_tokens < 1 or n_frames != -(-self.n_tokens // self.frame_tokens):
            raise self.error(f"{n_frames} frames of {self.frame_tokens} tokens cannot hold {self.n_tokens} tokens")
        expected_size = index_offset + n_frames * INDEX_ENTRY.itemsize
        if size != expected_size:
            raise self.error(f"file is {size} bytes, the header says {expected_size}: truncated or padded")
        with open(path, "rb") as f:
            f.seek(index_offset)
            index_bytes = f.read(n_frames * INDEX_ENTRY.itemsize)
        if zlib.crc32(index_bytes) != index_crc:
            raise self.error("frame index checksum mismatch: the index is corrupted")
        self.index = np.frombuffer(index_bytes, dtype=INDEX_ENTRY)
        ends = self.index["offset"] + self.index["size"]
        if n_frames and (self.index["offset"].min() < HEADER_SIZE or ends.max() > index_offset):
            frame = int(np.argmax((self.index["offset"] < HEADER_SIZE) | (ends > index_offset)))
            raise self.error("frame payload lies outside the data region", frame)

    def __getstate__(self) -> dict:
        # A memory map cannot be pickled (spawned DataLoader workers): the receiver reopens it.
        return {**self.__dict__, "_mmap": None, "_pid": None}

    def error(self, what: str, frame: int | None = None) -> ShardFormatError:
        where = f"{self.path}" if frame is None else f"{self.path}, frame {frame}"
        return ShardFormatError(f"{where}: {what}")

    def frame(self, i: int) -> np.ndarray:
        """Decompressed, verified tokens of frame `i` (read-only array of self.dtype)."""
        if self._pid != os.getpid():
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._pid = os.getpid()
        offset, size, crc = self.index[i]
        n = min(self.frame_tokens, self.n_tokens - i * self.frame_tokens)
        nbytes = n * self.dtype.itemsize
        payload = self._mmap[offset : offset + size]
        if zlib.crc32(payload) != crc:
            raise self.error("frame checksum mismatch: the compressed tokens are corrupted", i)
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=nbytes)
        except zstandard.ZstdError as e:
            raise self.error(f"zstd cannot decompress the payload ({e})", i) from None
        if len(raw) != nbytes:
            raise self.error(f"decompressed to {len(raw)} bytes, expected {nbytes}", i)
        tokens = np.frombuffer(raw, dtype=self.dtype)
        if n and int(tokens.max()) >= self.vocab_size:
            raise self.error(f"token {int(tokens.max())} >= vocab_size {self.vocab_size}", i)
        return tokens


class TokenDataset:
    """A shard file, or a directory of shards in sorted order, seen as one token sequence.

    `len(ds)` is the token count; `ds[a:b]` is a numpy array of `ds.dtype` (uint16 or uint32),
    read across frame and shard boundaries; `ds[i]` is one token. Only touched frames are
    decompressed; the last `cache_frames` decompressed frames are kept. Safe to use after fork
    (each process opens its own memory maps and keeps its own cache).
    """

    def __init__(self, path: str | os.PathLike, cache_frames: int = 16):
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob(f"*{SHARD_SUFFIX}"))
            if not files:
                raise FileNotFoundError(f"{path}: no *{SHARD_SUFFIX} shard files in this directory")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"{path}: no such shard file or directory")
        self.path = path
        self.shards = [_Shard(f) for f in files]
        vocab_sizes = {s.vocab_size for s in self.shards}
        if len(vocab_sizes) != 1:
            raise ShardFormatError(f"{path}: shards disagree on vocab_size: {sorted(vocab_sizes)}")
        self.vocab_size = vocab_sizes.pop()
        self.dtype = self.shards[0].dtype
        # starts[i] is the global index of shard i's first token; starts[-1] is the total.
        self.starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in self.shards])]).astype(np.int64)
        self.cache_frames = cache_frames
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __repr__(self) -> str:
        return f"TokenDataset({str(self.path)!r}, tokens={len(self)}, vocab_size={self.vocab_size})"

    def _frame(self, shard: int, frame: int) -> np.ndarray:
        key = (shard, frame)
        tokens = self._cache.get(key)
        if tokens is None:
            tokens = self.shards[shard].frame(frame)
            self._cache[key] = tokens
            if len(self._cache) > self.cache_frames:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return tokens

    def __getitem__(self, key: int | slice) -> np.ndarray | int:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self.read(start, max(stop - start, 0))
            picks = np.arange(start, stop, step)
            if not len(picks):
                return np.empty(0, self.dtype)
            lo = int(picks.min())
            return self.read(lo, int(picks.max()) - lo + 1)[picks - lo]
        index = int(key)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"token index {key} out of range for {len(self)} tokens")
        return int(self.read(index, 1)[0])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as a new numpy array of self.dtype."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"read({start}, {length}) out of range for {len(self)} tokens")
        out = np.empty(length, dtype=self.dtype)
        filled = 0
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while filled < length:
            s = self.shards[shard]
            local = start + filled - int(self.starts[shard])
            while filled < length and local < s.n_tokens:
                frame, within = divmod(local, s.frame_tokens)
                tokens = self._frame(shard, frame)
                n = min(len(tokens) - within, length - filled)
                out[filled : filled + n] = tokens[within : within + n]
                filled += n
                local += n
            shard += 1
        return out
