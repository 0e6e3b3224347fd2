"""Token shards: round trips across frame and shard boundaries, and every corruption detected."""

import numpy as np
import pytest

from grokcopy.data import ShardFormatError, TokenDataset, write_shards
from grokcopy.data.shards import HEADER_SIZE


def random_docs(rng, vocab_size, n_docs=7, max_len=300):
    return [rng.integers(0, vocab_size, rng.integers(0, max_len)) for _ in range(n_docs)]


@pytest.mark.parametrize("vocab_size, dtype", [(257, np.uint16), (65536, np.uint16), (70000, np.uint32)])
def test_round_trip_across_frames_and_shards(tmp_path, vocab_size, dtype):
    rng = np.random.default_rng(vocab_size)
    docs = random_docs(rng, vocab_size)
    eot = vocab_size - 1
    paths = write_shards(docs, tmp_path, vocab_size, shard_tokens=250, frame_tokens=37, eot=eot)
    expected = np.concatenate([np.append(d, eot) for d in docs])
    assert len(paths) == -(-len(expected) // 250) > 2

    ds = TokenDataset(tmp_path)
    assert len(ds) == len(expected)
    assert ds.dtype == dtype and ds.vocab_size == vocab_size
    np.testing.assert_array_equal(ds[:], expected)
    # windows that start anywhere and cross frame (37) and shard (250) boundaries
    for start in rng.integers(0, len(expected) - 1, 200):
        length = int(rng.integers(0, min(600, len(expected) - start) + 1))
        window = ds[int(start) : int(start) + length]
        assert window.dtype == dtype
        np.testing.assert_array_equal(window, expected[start : start + length])
    assert ds[-1] == eot and ds[5] == expected[5]
    np.testing.assert_array_equal(ds[3:400:7], expected[3:400:7])
    # a single shard file opens on its own
    single = TokenDataset(paths[1])
    np.testing.assert_array_equal(single[:], expected[250:500])


# Run in a fresh interpreter: a fork taken from the test process, after other tests have started
# torch's, zstd's and tokenizers' thread pools, can inherit a lock one of those threads held and hang.
# A DataLoader worker forks from a trainer that has not started them yet, which a fresh process mimics.
_CHILD_READS = """
import multiprocessing as mp, sys
from grokcopy.data import TokenDataset

ds = TokenDataset(sys.argv[1])
_ = ds[:10]  # open and cache in the parent first
starts = list(range(0, len(ds) - 50, 40))
expected = [int(ds[i : i + 50].sum()) for i in starts]

def window_sum(start):
    return int(ds[start : start + 50].sum())

def read_sum(args):
    dataset, start = args
    return int(dataset[start : start + 50].sum())

if __name__ == "__main__":
    if sys.argv[2] == "fork":  # inherited
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(window_sum, starts)
    else:  # pickled
        with mp.get_context("spawn").Pool(1) as pool:
            got = pool.map(read_sum, [(ds, i) for i in starts])
    assert got == expected, (got, expected)
    print("read", len(starts), "windows")
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reads_match_in_child_processes(tmp_path, method):
    """A dataset opened (and cached) in the parent reads correctly in forked children (inherited)
    and in spawned ones (pickled), as DataLoader workers and DDP ranks use it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    docs = random_docs(np.random.default_rng(1), 1000, n_docs=3)
    write_shards(docs, tmp_path / "shards", 1000, frame_tokens=16)
    script = tmp_path / "child_reads.py"
    script.write_text(_CHILD_READS)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "shards"), method],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("read ") and int(result.stdout.split()[1]) > 5


def test_writer_rejects_bad_tokens(tmp_path):
    with pytest.raises(ValueError, match="document 1: token 300 is outside the vocabulary"):
        write_shards([np.array([1, 2]), np.array([3, 300])], tmp_path, 257)
    with pytest.raises(ValueError, match="1-D integer"):
        write_shards([np.array([1.5])], tmp_path, 257)
    assert not list(tmp_path.glob("*.tok"))


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such shard file"):
        TokenDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no .*shard files"):
        TokenDataset(tmp_path)


@pytest.fixture
def small_shard(tmp_path):
    """A shard of 3 frames (vocab 50), and its tokens."""
    tokens = np.random.default_rng(2).integers(0, 50, 70)
    (path,) = write_shards([tokens], tmp_path, 50, frame_tokens=32, level=3)
    return path, tokens


def read_everything(path):
    ds = TokenDataset(path)
    return ds[:]


def test_every_flipped_byte_is_detected(small_shard):
    path, tokens = small_shard
    data = bytearray(path.read_bytes())
    np.testing.assert_array_equal(read_everything(path), tokens)
    for pos in range(len(data)):
        corrupt = bytearray(data)
        corrupt[pos] ^= 0x5A
        path.write_bytes(corrupt)
        with pytest.raises(ShardFormatError) as err:
            read_everything(path)
        assert str(path) in str(err.value), f"byte {pos}: message does not name the file"


def test_every_truncation_is_detected(small_shard):
    path, _ = small_shard
    data = path.read_bytes()
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(ShardFormatError, match="truncated"):
            read_everything(path)


@pytest.mark.parametrize(
    "pos, expected",
    [(0, "bad magic"), (8, "header checksum"), (20, "header checksum"), (HEADER_SIZE + 3, "frame 0")],
)
def test_corruption_messages_say_what_is_wrong(small_shard, pos, expected):
    path, _ = small_shard
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(data)
    with pytest.raises(ShardFormatError, match=expected):
        read_everything(path)


def test_token_beyond_vocab_is_detected_even_with_valid_checksums(tmp_path):
    """A shard whose checksums are all valid but whose tokens exceed vocab_size (a writer bug)."""
    from grokcopy.data import shards

    tokens = np.array([1, 2, 60, 3], dtype=np.uint16)
    chunks = shards._encode_shard(tokens, 50, frame_tokens=2, level=1)
    path = tmp_path / "bad.tok"
    path.write_bytes(b"".join(chunks))
    ds = TokenDataset(path)
    np.testing.assert_array_equal(ds[:2], [1, 2])
    with pytest.raises(ShardFormatError, match=r"frame 1: token 60 >= vocab_size 50"):
        ds[2:4]


def test_frame_index_out_of_bounds_is_detected_even_with_valid_checksums(small_shard):
    """An index entry pointing past the data region, with the index and header CRCs made valid."""
    import struct
    import zlib

    path, _ = small_shard
    data = bytearray(path.read_bytes())
    index_offset = struct.unpack_from("<Q", data, 40)[0]
    struct.pack_into("<Q", data, index_offset + 16, index_offset + 5)  # frame 1 starts inside the index
    index_crc = zlib.crc32(bytes(data[index_offset:]))
    struct.pack_into("<I", data, 48, index_crc)
    struct.pack_into("<I", data, 60, zlib.crc32(bytes(data[:60])))
    path.write_bytes(data)
    with pytest.raises(ShardFormatError, match=r"frame 1: frame payload lies outside the data region"):
        read_everything(path)


def test_unknown_version_is_reported(small_shard):
    import struct
    import zlib

    path, _ = small_shard
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", 7)
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60])))
    path.write_bytes(data)
    with pytest.raises(ShardFormatError, match="format version 7 is not supported"):
        read_everything(path)


def test_write_is_atomic(tmp_path, monkeypatch):
    """A crash mid-write leaves neither a shard under the final name nor a temp file behind."""
    import os

    def crash(*args):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk on fire"):
        write_shards([np.arange(10)], tmp_path, 257)
    assert list(tmp_path.iterdir()) == []
