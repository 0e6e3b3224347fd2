"""Copy evals: an oracle copier scores 1.0 (and ~0 on the control), a random model ~0."""

import numpy as np
import pytest
import torch

from grokcopy.data import TokenDataset, write_shards
from grokcopy.evals.copying import (
    PREFIX_TOKENS,
    SUFFIX_TOKENS,
    copy_metrics,
    make_copy_cases,
    make_repeat_batch,
    repeat_metrics,
)
from grokcopy.evals.curves import plot_curves, race_warning, run_summary
from grokcopy.evals.onsets import half_max_step
from grokcopy.evals.targets import second_copy_targets
from grokcopy.kernels.reference import AttentionStats
from grokcopy.model import Llama, LlamaConfig

VOCAB = 60


@pytest.fixture(scope="module")
def val_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, VOCAB, int(rng.integers(200, 400))) for _ in range(30)]
    path = tmp_path_factory.mktemp("val")
    write_shards(docs, path, VOCAB, eot=0)
    return TokenDataset(path)


class OracleCopier(torch.nn.Module):
    """Predicts the token that followed the previous occurrence of the last 12 tokens."""

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, VOCAB)
        for b in range(B):
            seq = idx[b].tolist()
            for t in range(PREFIX_TOKENS - 1, T):
                gram = seq[t - PREFIX_TOKENS + 1 : t + 1]
                for j in range(t - 1, PREFIX_TOKENS - 2, -1):
                    if seq[j - PREFIX_TOKENS + 1 : j + 1] == gram:
                        logits[b, t, seq[j + 1]] = 1.0
                        break
        return logits


def test_cases_follow_the_protocol(val_data):
    cases = make_copy_cases(val_data, 100, eot=0, n=40, seed=3)
    assert cases.copy.shape == cases.control.shape == (40, 100)
    W = 100 - PREFIX_TOKENS - SUFFIX_TOKENS
    for copy, control in zip(cases.copy, cases.control, strict=True):
        window, prefix, suffix = copy[:W], copy[W : W + PREFIX_TOKENS], copy[W + PREFIX_TOKENS :]
        np.testing.assert_array_equal(control[W:], copy[W:])
        assert not (window == 0).any(), "windows stay inside one document"
        grams = np.lib.stride_tricks.sliding_window_view(window, PREFIX_TOKENS)
        matches = np.flatnonzero((grams == prefix).all(1))
        assert len(matches) == 1, "the prefix occurs exactly once in the window"
        np.testing.assert_array_equal(window[matches[0] + PREFIX_TOKENS : matches[0] + 18], suffix)
        assert not (np.lib.stride_tricks.sliding_window_view(control[:W], PREFIX_TOKENS) == prefix).all(1).any()
    again = make_copy_cases(val_data, 100, eot=0, n=40, seed=3)
    np.testing.assert_array_equal(again.copy, cases.copy)


def test_oracle_copier_scores_one_and_zero_on_control(val_data):
    cases = make_copy_cases(val_data, 80, eot=0, n=30)
    m = copy_metrics(OracleCopier(), cases, "cpu")
    assert m["copy_acc"] == 1.0 and m["copy_token_acc"] == 1.0
    assert m["copy_control_acc"] <= 0.05
    assert m["copy_gain"] >= 0.95


def test_random_model_scores_about_zero(val_data):
    cases = make_copy_cases(val_data, 80, eot=0, n=30)
    model = Llama(LlamaConfig(vocab_size=VOCAB, n_layers=1, n_heads=2, d_model=16, d_mlp=32, context=80)).eval()
    m = copy_metrics(model, cases, "cpu")
    assert m["copy_acc"] <= 0.05 and m["copy_token_acc"] < 0.2


def test_repeat_batch_layout():
    tokens, periods = make_repeat_batch(500, 64, n=20, seed=1)
    assert tokens.shape == (20, 64)
    assert len(set(periods.tolist())) > 3, "periods vary"
    for seq, L in zip(tokens, periods, strict=True):
        L = int(L)
        torch.testing.assert_close(seq[64 - L :], seq[64 - 2 * L : 64 - L])
        assert len(set(seq[64 - L :].tolist())) == L
    targets = second_copy_targets(64, periods)
    t, L = 63, int(periods[0])
    assert targets[0, t, 0] == t - L + 1 and targets[0, 64 - L - 1, 0] == -1


class PerfectInductionModel(torch.nn.Module):
    """Attends fully to each target key and predicts the token at that key: a perfect copier."""

    def __init__(self, n_layers=2, n_heads=3):
        super().__init__()
        self.n_layers, self.n_heads = n_layers, n_heads

    def forward(self, idx, attention_targets):
        B, T = idx.shape
        tgt = attention_targets[..., 0]
        logits = torch.zeros(B, T, 500)
        safe = tgt.clamp(min=0)
        logits.scatter_(2, idx.gather(1, safe)[..., None], 1.0)
        mass = (tgt >= 0).float()[:, None, :, None].expand(B, self.n_heads, T, 1)
        zeros = torch.zeros(B, self.n_heads, T)
        return logits, [AttentionStats(zeros, zeros, mass) for _ in range(self.n_layers)]


def test_repeat_metrics_of_a_perfect_and_a_uniform_model():
    tokens, periods = make_repeat_batch(500, 64, n=16, seed=2)
    m = repeat_metrics(PerfectInductionModel(), tokens, periods, "cpu")
    assert m["repeat_acc"] == 1.0
    assert np.allclose(m["induction"], 1.0) and m["induction_max"] == [1.0, 1.0]
    # a real (random) model with uniform-ish attention scores about 1/context, and near-chance accuracy
    model = Llama(LlamaConfig(vocab_size=500, n_layers=1, n_heads=2, d_model=16, d_mlp=32, context=64,
                              init_std=1e-4)).eval()
    m = repeat_metrics(model, tokens, periods, "cpu")
    assert m["repeat_acc"] < 0.05
    assert 0 < max(m["induction_max"]) < 0.1


def test_half_max_step_and_summary(tmp_path):
    assert half_max_step([1, 2, 3, 4], [0.0, 0.1, 0.6, 0.8]) == 3
    assert half_max_step([1, 2], [0.0, 0.0]) is None
    records = [{"step": s, "tokens": 10 * s, "loss": 5 - s / 10} for s in range(1, 11)]
    for r in records[4::5]:
        r.update(val_loss=r["loss"], copy_acc=0.5, copy_token_acc=0.7, copy_control_acc=0.1, copy_gain=0.4,
                 copy_control_token_acc=0.2, repeat_acc=0.2, induction_max=[0.1, 0.3])
    text = run_summary(records, wall_s=120)
    # the onsets are evals/onsets.py's, the same as evals.report prints
    assert "steps 10" in text and "copy surge (token-level gain >= 0.1): step 5" in text
    assert "copy onset (half of the maximum gain): step 5" in text
    # an onset the run did not reach reads "none", not Python's None
    assert "loss plateau: none" in text and "None" not in text
    assert "no copy surge" not in text
    plot_curves(records, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000


@pytest.mark.parametrize("previous_token, surge_gain, says_why", [
    ([0.05, 0.20, 0.45], 0.05, True),    # no surge, strongest previous-token head in the last layer
    ([0.05, 0.60, 0.10], 0.05, False),   # no surge, but the head sits where an induction head can read it
    ([0.05, 0.20, 0.45], 0.40, False),   # a surge: nothing to explain
])
def test_summary_says_when_the_previous_token_head_sits_in_the_last_layer(previous_token, surge_gain, says_why):
    records = [{"step": s, "tokens": 10 * s, "loss": 4.0} for s in range(1, 11)]
    for r in records[4::5]:
        r.update(val_loss=4.0, copy_acc=0.0, copy_token_acc=0.3 + surge_gain, copy_control_acc=0.0,
                 copy_gain=surge_gain, copy_control_token_acc=0.3, repeat_acc=0.0, induction_max=[0.0, 0.0, 0.01],
                 previous_token_max=previous_token)
    text = run_summary(records, wall_s=60)
    assert "previous-token score (max head) per layer: " + ", ".join(f"{v:.2f}" for v in previous_token) in text
    assert ("no copy surge: the strongest previous-token head formed in layer 2, the last" in text) == says_why
    assert ("--nope-every 3 (the last layer without RoPE) keeps the head out of it" in text) == says_why


@pytest.mark.parametrize("previous_token, surged, warns", [
    ([0.04, 0.16, 0.45], False, True),   # the last layer leads (seed 5's step 900 in docs/TINY.md)
    ([0.04, 0.45, 0.12], False, False),  # layer 1 leads: an induction head can read it
    ([0.04, 0.10, 0.20], False, False),  # the last layer leads, but nothing has formed yet
    ([0.04, 0.16, 0.45], True, False),   # a surge already: copying works, nothing to warn about
    ([0.90], False, False),              # one layer: there is no earlier layer to compare with
])
def test_race_warning_names_a_previous_token_head_in_the_last_layer(previous_token, surged, warns):
    record = {"step": 900, "previous_token_max": previous_token}
    line = race_warning(record, surged)
    assert (line is not None) == warns
    if warns:
        assert line.startswith("step 900: the strongest previous-token head (0.45) is forming in layer 2, the last")
        assert line.endswith("--nope-every 3 (the last layer without RoPE) prevents it (round 7).")
    assert race_warning({"step": 900}, False) is None  # a run that logs no previous-token scores


def test_trained_tokens_are_the_ids_seen_often_enough():
    from grokcopy.evals.copying import trained_tokens

    train = np.array([5] * 150 + [7] * 99 + [9] * 300 + [2] * 200 + [3])
    np.testing.assert_array_equal(trained_tokens(train, 12), [2, 5, 9])
    np.testing.assert_array_equal(trained_tokens(train, 12, exclude=2), [5, 9])  # the end-of-text id
    np.testing.assert_array_equal(trained_tokens(train, 12, sample=150), [5])  # only the counted prefix
    # too few qualify: the most frequent ones instead
    np.testing.assert_array_equal(trained_tokens(train, 12, exclude=2, at_least=3), [5, 7, 9])
    train = np.repeat(np.arange(10), [150, 150, 150, 150, 50, 150, 150, 150, 150, 150])
    tokens, _ = make_repeat_batch(12, 16, n=8, tokens=trained_tokens(train, 12))
    assert set(tokens.unique().tolist()) == {0, 1, 2, 3, 5, 6, 7, 8, 9}
