"""Copy evaluations: the paper's copy accuracy with its control, and repeated random tokens.

Copy accuracy (arXiv 2409.09281): a case is a window of held-out text that contains a 12-token
prefix followed by a 6-token suffix, where that 12-gram occurs only once in the window; the
prefix is appended again after the window and the model must continue with the suffix. We score
it with one teacher-forced forward pass: the case counts when the argmax at all 6 suffix
positions is right, which is exactly when greedy decoding of 6 tokens reproduces the suffix.
`copy_token_acc` is the teacher-forced per-token accuracy.

The control appends the same prefix to an unrelated held-out window that does not contain it:
what is left is how often the suffix can be guessed without copying. Plots use the gain.

Repeated random tokens: a sequence of L random distinct tokens, repeated, after a random
lead-in (L varies per sequence, so there is no fixed period to learn). `repeat_acc` is the
next-token accuracy over the second copy; the induction score of a head is its mean attention on
the key one after the previous occurrence of the current token (t - L + 1), over the second copy.
The trainer draws the tokens from those the model has been trained on (`trained_tokens`): a BPE
vocabulary holds ids that its training text never or hardly contains (unused bytes, rare merges),
whose embeddings weight decay leaves at ~0, so no model could copy them. Measured on the 3-layer
BPE-1024 default, uniform ids over the whole vocabulary put 7% of the scored positions on ids never
seen in training and 21% on ids seen fewer than 1,000 times, all at accuracy 0.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grokcopy.data.atomic import write_atomically
from grokcopy.evals import metric_keys as mk
from grokcopy.evals.targets import second_copy_targets

PREFIX_TOKENS = 12
SUFFIX_TOKENS = 6
# A copy case is a window holding the prefix and suffix (at least 18 tokens), then the prefix and
# suffix again: the shortest sequence a copy eval can use.
MIN_SEQ_LEN = 2 * (PREFIX_TOKENS + SUFFIX_TOKENS)
N_COPY_CASES = 200  # the first 50 are the paper's set; 200 keep the figure from being noisy
N_REPEAT_SEQUENCES = 64
# Repeated random tokens come from ids seen at least this often in the first REPEAT_COUNT_SAMPLE
# tokens of the training split.
REPEAT_MIN_COUNT = 100
REPEAT_COUNT_SAMPLE = 10_000_000


@dataclass
class CopyCases:
    """Fixed copy-eval inputs. copy, control: int64 [N, W + 18] (window, prefix, suffix)."""

    copy: np.ndarray
    control: np.ndarray

    def save(self, path: str | os.PathLike) -> None:
        """Atomically: a kill mid-write leaves the old file or none, never a truncated one."""
        write_atomically(path, lambda f: np.savez(f, copy=self.copy, control=self.control))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CopyCases:
        with np.load(path) as f:
            return cls(f["copy"], f["control"])


def _contains(window: np.ndarray, ngram: np.ndarray) -> int:
    """How many times `ngram` occurs in `window`."""
    views = np.lib.stride_tricks.sliding_window_view(window, len(ngram))
    return int((views == ngram).all(axis=1).sum())


def make_copy_cases(dataset, seq_len: int, *, eot: int | None, n: int = N_COPY_CASES, seed: int = 1234) -> CopyCases:
    """Draw `n` copy cases (and their controls) of `seq_len` tokens from a held-out dataset.

    Windows lie inside one document (no `eot` in them), the 12-gram occurs once in its window,
    and the control window does not contain the 12-gram. Deterministic from `seed`.
    """
    W = seq_len - PREFIX_TOKENS - SUFFIX_TOKENS
    span = PREFIX_TOKENS + SUFFIX_TOKENS
    if W < span:
        raise ValueError(f"seq_len {seq_len} is too short for copy cases (needs >= {2 * span})")
    if len(dataset) < 4 * W:
        raise ValueError(f"{dataset!r} is too small for copy cases of {W}-token windows")
    rng = np.random.default_rng(seed)

    def clean_window() -> np.ndarray:
        for _ in range(10_000):
            start = int(rng.integers(0, len(dataset) - W))
            window = dataset.read(start, W).astype(np.int64)
            if eot is None or not (window == eot).any():
                return window
        raise ValueError(f"{dataset!r}: cannot find {W}-token windows without an end-of-text token")

    copies, controls = [], []
    while len(copies) < n:
        window = clean_window()
        p = int(rng.integers(0, W - span + 1))
        prefix, suffix = window[p : p + PREFIX_TOKENS], window[p + PREFIX_TOKENS : p + span]
        if _contains(window, prefix) != 1:
            continue
        other = clean_window()
        if _contains(other, prefix):
            continue
        copies.append(np.concatenate([window, prefix, suffix]))
        controls.append(np.concatenate([other, prefix, suffix]))
    return CopyCases(np.stack(copies), np.stack(controls))


def load_or_make_copy_cases(path: Path, dataset, seq_len: int, eot: int | None, save: bool = True,
                            warn=lambda message: None) -> CopyCases:
    """The run's fixed case set: made once, stored in the run directory, reused on resume.

    Making them is deterministic, so every DDP rank can call this; only one should `save`. A file
    that cannot be read is made again (the same cases), and `warn` says so.
    """
    if path.is_file():
        try:
            cases = CopyCases.load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            warn(f"warning: {path} cannot be read ({type(e).__name__}); making the same copy cases again")
        else:
            if cases.copy.shape[1] == seq_len:
                return cases
    cases = make_copy_cases(dataset, seq_len, eot=eot)
    if save:
        cases.save(path)
    return cases


@torch.no_grad()
def _suffix_hits(model, sequences: np.ndarray, device, batch_size: int) -> np.ndarray:
    """Bool [N, 6]: argmax at each suffix position equals the suffix token (teacher-forced)."""
    hits = []
    for i in range(0, len(sequences), batch_size):
        seq = torch.as_tensor(sequences[i : i + batch_size], device=device)
        logits = model(seq[:, :-1])
        predicted = logits[:, -SUFFIX_TOKENS:].argmax(-1)
        hits.append((predicted == seq[:, -SUFFIX_TOKENS:]).cpu().numpy())
    return np.concatenate(hits)


def copy_metrics(model, cases: CopyCases, device, batch_size: int = 32) -> dict[str, float]:
    """copy_acc, copy_token_acc, copy_control_acc, copy_gain (= copy_acc - copy_control_acc)."""
    hits = _suffix_hits(model, cases.copy, device, batch_size)
    control = _suffix_hits(model, cases.control, device, batch_size)
    copy_acc, control_acc = float(hits.all(1).mean()), float(control.all(1).mean())
    return {
        mk.COPY_ACC: copy_acc,
        mk.COPY_TOKEN_ACC: float(hits.mean()),
        mk.COPY_CONTROL_ACC: control_acc,
        mk.COPY_CONTROL_TOKEN_ACC: float(control.mean()),
        mk.COPY_GAIN: copy_acc - control_acc,
        # the paper's own 50-case set, the first 50 of ours
        mk.COPY_ACC_PAPER50: float(hits[:50].all(1).mean()),
    }


def trained_tokens(train, vocab_size: int, *, exclude: int | None = None, at_least: int = 0,
                   min_count: int = REPEAT_MIN_COUNT, sample: int = REPEAT_COUNT_SAMPLE) -> np.ndarray:
    """Sorted int64 ids seen at least `min_count` times in the first `sample` tokens of `train` (a
    token sequence, e.g. a TokenDataset), `exclude` (the end-of-text id) left out; when fewer than
    `at_least` ids qualify, the `at_least` most frequent ones instead (a corpus too small to count on)."""
    counts = np.bincount(np.asarray(train[: min(len(train), sample)], dtype=np.int64), minlength=vocab_size)
    if exclude is not None:
        counts[exclude] = -1
    ids = np.flatnonzero(counts >= min_count)
    if len(ids) < at_least:
        ids = np.sort(np.argsort(-counts, kind="stable")[:at_least])
    return ids


def make_repeat_batch(vocab_size: int, seq_len: int, *, n: int = N_REPEAT_SEQUENCES, seed: int = 4321,
                      low: int = 0, tokens: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeated random token sequences. Returns (tokens int64 [n, seq_len], period int64 [n]).

    Sequence i is a random lead-in of seq_len - 2 L_i tokens, then L_i distinct random tokens,
    then the same L_i tokens again; L_i is drawn from [8, seq_len // 2]. Tokens come from `tokens`
    (ids to draw from, e.g. `trained_tokens`), by default from [low, vocab_size) so special tokens
    can be left out.
    """
    rng = np.random.default_rng(seed)
    pool = np.arange(low, vocab_size) if tokens is None else np.asarray(tokens, dtype=np.int64)
    if len(pool) < seq_len // 2:
        raise ValueError(f"vocab of {len(pool)} usable tokens is too small for repeats of {seq_len // 2}")
    tokens = np.empty((n, seq_len), dtype=np.int64)
    periods = rng.integers(8, seq_len // 2 + 1, n)
    for i, L in enumerate(periods):
        lead = pool[rng.integers(0, len(pool), seq_len - 2 * L)]
        body = rng.choice(pool, L, replace=False)
        tokens[i] = np.concatenate([lead, body, body])
    return torch.as_tensor(tokens), torch.as_tensor(periods)


def sequence_target_mass(stats: list, targets: torch.Tensor, k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence head scores from a forward pass's AttentionStats (one per layer).

    targets: int64 [B, T, K] (-1: the query has no target); `k` picks the target column scored.
    Returns (mass fp32 [layers, B, heads]: the attention probability on the target key, averaged
    over the queries of each sequence that have one; has fp32 [B]: 1 where the sequence has any
    such query, else 0 and its mass is 0).
    """
    has_target = (targets[..., k] >= 0).float()  # [B, T]
    counted = has_target.sum(-1)  # [B]
    mass = torch.stack([(s.target_mass[..., k].float() * has_target[:, None]).sum(-1) for s in stats])
    return mass / counted.clamp(min=1)[None, :, None], (counted > 0).float()


@torch.no_grad()
def repeat_metrics(model, tokens: torch.Tensor, periods: torch.Tensor, device, batch_size: int = 16) -> dict:
    """repeat_acc (next-token accuracy over the second copy) and induction scores.

    Returns {"repeat_acc": float, "induction": [[score per head] per layer],
    "induction_max": [max over heads per layer]} (the keys of evals/metric_keys.py).
    """
    n, T = tokens.shape
    correct, counted = 0, 0
    mass_sum = None
    for i in range(0, n, batch_size):
        seq = tokens[i : i + batch_size].to(device)
        L = periods[i : i + batch_size].to(device)
        targets = second_copy_targets(T, periods[i : i + batch_size]).to(device)
        logits, stats = model(seq, attention_targets=targets)
        t = torch.arange(T, device=device)[None, :]
        # position t predicts token t + 1; inside the second copy every next token is a copy
        # (the first token of the second copy follows the lead-in's last token and is not)
        predicts_copy = (t >= T - L[:, None]) & (t < T - 1)
        hits = (logits[:, :-1].argmax(-1) == seq[:, 1:]) & predicts_copy[:, :-1]
        correct += int(hits.sum())
        counted += int(predicts_copy.sum())
        batch_sum = sequence_target_mass(stats, targets)[0].sum(1)  # [layers, heads]
        mass_sum = batch_sum if mass_sum is None else mass_sum + batch_sum
    induction = (mass_sum / n).cpu()
    return {
        mk.REPEAT_ACC: correct / max(counted, 1),
        mk.INDUCTION: induction.tolist(),
        mk.best_head(mk.INDUCTION): induction.max(-1).values.tolist(),
    }
