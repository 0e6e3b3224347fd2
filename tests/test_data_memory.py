"""Bounded memory in `data.prepare`: documents are cut into pieces where the BPE's pre-tokeniser
splits anyway (so the tokens are those of the whole document), and a 6 MB one-line document no
longer costs gigabytes (a 47 MB one took 9.2 GB and 2 min 13 s)."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grokcopy.data.prepare import Tokenizer, train_bpe
from grokcopy.data.sources import cut_pieces

ROOT = Path(__file__).resolve().parents[1]


def messy_text(n_chars: int, seed: int) -> str:
    """Words, numbers, punctuation, contractions and every kind of whitespace run, non-ASCII too."""
    rng = random.Random(seed)
    atoms = ["def", "return", "x", "caf\u00e9", "\u65e5\u672c", "42", "3.14", "it's", "we'll", "(", ")", ":", "#",
             "==", "\U0001f600", "x\u00a0y", "foo_bar", "'s"]
    spaces = [" ", "  ", "\n", "\n    ", "\t", "\r\n", "\n\n", " \n", "   \t "]
    out, size, glued = [], 0, 0
    while size < n_chars:
        glued = glued + 1 if rng.random() < 0.4 and glued < 2 else 0  # at most 3 atoms without a space
        piece = rng.choice(atoms) + ("" if glued else rng.choice(spaces))
        out.append(piece)
        size += len(piece)
    return "".join(out)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(iter([messy_text(20_000, seed) for seed in range(5)]), 400)


@pytest.mark.parametrize("piece_chars", [1, 7, 64, 1000])
def test_cut_pieces_are_bounded_and_lossless(piece_chars):
    text = messy_text(5000, 1) + "x" * 3000  # ends in a run with no place to cut
    blocks = [text[i : i + 333] for i in range(0, len(text), 333)]
    pieces = list(cut_pieces(blocks, piece_chars))
    assert "".join(pieces) == text
    assert max(map(len, pieces)) <= piece_chars
    assert pieces == list(cut_pieces([text], piece_chars)), "cuts must not depend on how the text arrives"


@pytest.mark.parametrize("piece_chars", [40, 64, 300])
def test_encoding_in_pieces_gives_the_tokens_of_the_whole(bpe, piece_chars):
    """Cut only before whitespace that follows a non-space character, the pieces' tokens are exactly
    the whole document's, for the byte-level BPE prepare trains."""
    for seed in range(20):
        text = messy_text(3000, 100 + seed)
        whole = bpe.encode_batch([text])[0]
        pieces = list(cut_pieces([text], piece_chars))
        assert len(pieces) > 5
        # every cut is a proper one here (the text has no 40 characters without a place to cut)
        assert all(b[0] in " \t\r\n" and not a[-1].isspace() for a, b in zip(pieces, pieces[1:], strict=False))
        np.testing.assert_array_equal(np.concatenate(bpe.encode_batch(pieces)), whole)


def test_a_tokenizer_whose_tokens_change_at_cuts_is_recognised(bpe, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import normalizers

    from grokcopy.data.prepare import _cuts_are_exact

    assert _cuts_are_exact(bpe.hf)
    prepending = HFTokenizer.from_str(bpe.hf.to_str())
    prepending.normalizer = normalizers.Prepend("\u2581")  # as Llama 2's tokenizer.json does
    assert not _cuts_are_exact(prepending)


# VmHWM is the peak resident memory of this process image; ru_maxrss would also count the pytest
# process it was forked from (Linux carries the larger of the two across exec).
CHILD = """
import re, sys
from pathlib import Path
from grokcopy.data.prepare import main
main(sys.argv[1:])
print("peak_rss_kib", re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def test_a_long_one_line_document_has_bounded_memory(tmp_path):
    """6 MB on one line: the peak memory of the whole prepare (BPE training and encoding) stays
    within 300 MB (measured 155 MB). Before, the line was trained on and encoded whole: ~1.7 GB."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    line = " ".join(rng.choice(words) for _ in range(6_000_000 // 6))
    (tmp_path / "long.txt").write_text(line)
    (tmp_path / "short.txt").write_text("a short second document\n")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, "--input", str(tmp_path / "long.txt"), str(tmp_path / "short.txt"),
         "--out", str(tmp_path / "o"), "--vocab-size", "400", "--val-fraction", "0.5", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak_mb = int(result.stdout.split("peak_rss_kib")[1]) / 1024
    assert peak_mb < 300, f"peak memory {peak_mb:.0f} MB"
    print(f"peak memory {peak_mb:.0f} MB for a 6 MB line")  # shown with pytest -s
