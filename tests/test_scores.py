"""Attention scores: the Triton stats kernel and the torch reference agree on a real model, and
hand-built attention patterns give their known answers."""

import numpy as np
import torch

from grokcopy import kernels
from grokcopy.evals.copying import make_repeat_batch, repeat_metrics
from grokcopy.evals.scores import (
    attention_scores,
    induction_scores,
    prefix_matching_scores,
    previous_token_scores,
    target_mass_scores,
)
from grokcopy.kernels.reference import AttentionStats
from grokcopy.model import Llama, LlamaConfig

VOCAB, T = 64, 32


class PatternModel(torch.nn.Module):
    """Returns chosen attention: "target" puts all mass on each target key, "uniform" spreads it
    evenly over the causal window (mass 1 / (t + 1) on any key of query t)."""

    def __init__(self, pattern: str, n_layers: int = 2, n_heads: int = 3):
        super().__init__()
        self.pattern, self.n_layers, self.n_heads = pattern, n_layers, n_heads

    def forward(self, idx, attention_targets):
        B, T = idx.shape
        has = (attention_targets[..., 0] >= 0).float()
        if self.pattern == "target":
            mass = has
        else:
            mass = has / torch.arange(1, T + 1).float()
        mass = mass[:, None, :, None].expand(B, self.n_heads, T, 1)
        zeros = torch.zeros(B, self.n_heads, T)
        return torch.zeros(B, T, VOCAB), [AttentionStats(zeros, zeros, mass) for _ in range(self.n_layers)]


def text_tokens(n=6, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).integers(0, 8, (n, T)))  # small alphabet: many repeats


def test_perfect_head_scores_one_and_uniform_head_one_over_context():
    tokens = text_tokens()
    perfect = attention_scores(PatternModel("target"), tokens, VOCAB, "cpu")
    for key in ("induction", "previous_token", "prefix_matching"):
        assert np.allclose(perfect[key], 1.0) and perfect[f"{key}_max"] == [1.0, 1.0]
    # uniform attention: previous-token mass is 1 / (t + 1), averaged over t = 1 .. T - 1
    uniform = previous_token_scores(PatternModel("uniform"), tokens, "cpu")
    expected = np.mean([1 / (t + 1) for t in range(1, T)])
    assert torch.allclose(uniform, torch.full((2, 3), expected))
    # a single-position window: only queries with a target count, and a sequence without any is skipped
    targets = torch.full((2, T, 1), -1)
    targets[0, T - 1, 0] = 0
    s = target_mass_scores(PatternModel("uniform"), tokens[:2], targets, "cpu")
    assert torch.allclose(s, torch.full((2, 3), 1 / T))


def test_induction_score_matches_repeat_metrics():
    model = Llama(LlamaConfig(vocab_size=VOCAB, n_layers=2, n_heads=2, d_model=32, d_mlp=64, context=T,
                              attention="torch")).eval()
    tokens, periods = make_repeat_batch(VOCAB, T, n=8, seed=5)
    m = repeat_metrics(model, tokens, periods, "cpu")
    s = induction_scores(model, VOCAB, T, "cpu", n=8, seed=5)
    assert np.allclose(m["induction"], s.numpy())


def test_triton_stats_kernel_matches_torch_reference(monkeypatch):
    # head_dim 16 (a size the kernel supports); the triton model runs under the interpreter on CPU
    calls = []
    real = kernels.flash_attention_with_stats
    monkeypatch.setattr(kernels, "flash_attention_with_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = dict(vocab_size=VOCAB, n_layers=2, n_heads=2, d_model=32, d_mlp=64, context=T, init_std=0.2)
    reference = Llama(LlamaConfig(**cfg, attention="torch")).eval()
    kernel = Llama(LlamaConfig(**cfg, attention="triton")).eval()
    kernel.load_state_dict(reference.state_dict())
    tokens = text_tokens(n=4, seed=1)
    for score in (previous_token_scores, prefix_matching_scores):
        a, b = score(reference, tokens, "cpu"), score(kernel, tokens, "cpu")
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert a.std() > 0, "a random model with large init has heads that differ"
    a = induction_scores(reference, VOCAB, T, "cpu", n=4)
    b = induction_scores(kernel, VOCAB, T, "cpu", n=4)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert len(calls) == 3 * 2, "the kernel path ran: 3 scores x 2 layers, one batch each"


def test_training_forward_scores_equal_the_eval_scores():
    """batch_text_scores (one forward with both text targets, as train.py's --train-stats-every
    does) gives the best-head previous-token and prefix-matching mass of text_scores."""
    from grokcopy.evals.scores import batch_text_scores, text_scores, text_targets

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=17, n_layers=2, n_heads=2, d_model=16, d_mlp=32, context=40)).eval()
    tokens = torch.randint(0, 17, (3, 40))  # a small vocab: many earlier occurrences to match
    targets = text_targets(tokens)
    with torch.no_grad():
        _, stats = model(tokens, attention_targets=targets)
    train = batch_text_scores(stats, targets)
    reference = text_scores(model, tokens, "cpu")
    for name in ("previous_token", "prefix_matching"):
        assert np.allclose(train[f"train_{name}_max"], reference[f"{name}_max"], atol=1e-6), name
