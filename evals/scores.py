"""Per layer x head attention scores, read from the attention-stats path (no T x T matrix on triton).

Each score is the attention probability a head puts on one target key per query, averaged over
the queries that have a target within a sequence, then over sequences (so 1.0 = the head always
attends fully to the target; a head spreading evenly over its causal window scores about
1 / (position + 1), averaged over the scored positions):
- induction: repeated random tokens (evals.copying.make_repeat_batch), target t - L + 1 over
  the second copy: the token after the previous occurrence of the current token;
- previous_token: target t - 1 on validation text (the first half of an induction circuit);
- prefix_matching: kernels.induction_targets on validation text: natural-text induction mass,
  the token after the last earlier occurrence of the current token (queries without one are skipped).

The model's forward with `attention_targets` returns these masses from
`kernels.flash_attention_with_stats` (attention="triton") or from the torch reference.
"""

from __future__ import annotations

import torch

from grokcopy.evals import metric_keys as mk
from grokcopy.evals.copying import make_repeat_batch, sequence_target_mass
from grokcopy.evals.targets import induction_targets, previous_token_targets, second_copy_targets


@torch.no_grad()
def target_mass_scores(model, tokens: torch.Tensor, targets: torch.Tensor, device, batch_size: int = 16
                       ) -> torch.Tensor:
    """Mean attention mass on `targets` per layer and head: fp32 [layers, heads] on the CPU.

    tokens: int64 [N, T]; targets: int64 [N, T, 1] (-1: query not scored). Sequences with no
    scored query do not count in the mean.
    """
    mass_sum, seq_count = None, 0.0
    for i in range(0, len(tokens), batch_size):
        batch_targets = targets[i : i + batch_size].to(device)
        _, stats = model(tokens[i : i + batch_size].to(device), attention_targets=batch_targets)
        mass, has = sequence_target_mass(stats, batch_targets)
        batch_sum = mass.sum(1).float().cpu()
        mass_sum = batch_sum if mass_sum is None else mass_sum + batch_sum
        seq_count += float(has.sum())
    return mass_sum / max(seq_count, 1.0)


def induction_scores(model, vocab_size: int, seq_len: int, device, *, n: int = 64, seed: int = 4321,
                     low: int = 0) -> torch.Tensor:
    """Induction score [layers, heads] on repeated random tokens (the same batch repeat_metrics uses)."""
    tokens, periods = make_repeat_batch(vocab_size, seq_len, n=n, seed=seed, low=low)
    return target_mass_scores(model, tokens, second_copy_targets(seq_len, periods), device)


def previous_token_scores(model, tokens: torch.Tensor, device) -> torch.Tensor:
    """Previous-token score [layers, heads] on text tokens int64 [N, T]: mass on key t - 1."""
    return target_mass_scores(model, tokens, previous_token_targets(*tokens.shape), device)


def prefix_matching_scores(model, tokens: torch.Tensor, device) -> torch.Tensor:
    """Natural-text induction mass [layers, heads] on text tokens int64 [N, T] (see module docstring)."""
    return target_mass_scores(model, tokens, induction_targets(tokens), device)


def text_scores(model, text_tokens: torch.Tensor, device) -> dict:
    """previous_token and prefix_matching on validation windows int64 [N, T], as logged by train.py.

    Keys: previous_token, prefix_matching ([layers][heads]) and <key>_max ([layers]).
    """
    return as_lists({mk.PREVIOUS_TOKEN: previous_token_scores(model, text_tokens, device),
                     mk.PREFIX_MATCHING: prefix_matching_scores(model, text_tokens, device)})


TEXT_SCORES = (mk.PREVIOUS_TOKEN, mk.PREFIX_MATCHING)  # the target columns of text_targets, in order


def text_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Both text scores' targets for one forward: int64 [B, T, 2] (TEXT_SCORES order) on tokens' device."""
    return torch.cat([previous_token_targets(*tokens.shape, device=tokens.device), induction_targets(tokens)], -1)


def batch_text_scores(stats: list, targets: torch.Tensor, prefix: str = "train_") -> dict:
    """Best head per layer of each text score, from one forward's AttentionStats with text_targets.

    Returns {f"{prefix}previous_token_max": [layers], f"{prefix}prefix_matching_max": [layers]},
    means over this batch's sequences (those with no scored query left out).
    """
    out = {}
    for k, name in enumerate(TEXT_SCORES):
        mass, has = sequence_target_mass(stats, targets, k)  # [layers, B, heads], [B]
        mean = (mass * has[None, :, None]).sum(1) / has.sum().clamp(min=1)
        out[f"{prefix}{name}_max"] = mean.max(-1).values.tolist()
    return out


def attention_scores(model, text_tokens: torch.Tensor, vocab_size: int, device, *, low: int = 0) -> dict:
    """All three scores as lists [layers][heads], with the best head per layer for each.

    text_tokens: validation windows int64 [N, T]; the repeat batch uses the same T.
    Keys: induction, previous_token, prefix_matching, and <key>_max ([layers]).
    """
    induction = induction_scores(model, vocab_size, text_tokens.shape[1], device, low=low)
    return {**as_lists({mk.INDUCTION: induction}), **text_scores(model, text_tokens, device)}


def as_lists(scores: dict[str, torch.Tensor]) -> dict:
    """{name: [layers, heads] tensor} -> {name: nested list, name_max: best head per layer}."""
    out: dict = {}
    for name, s in scores.items():
        out[name] = s.tolist()
        out[f"{name}_max"] = s.max(-1).values.tolist()
    return out
