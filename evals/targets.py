"""Target keys for the attention statistics (`flash_attention_with_stats`, the model's
`attention_targets`): where a copying head should look, per query. Eval definitions, not kernels.

Each helper returns an int64 [B, T, 1] tensor of key positions (-1: no target). Passed as
`targets`, the kernel reports the attention probability each query puts on its target key
(`AttentionStats.target_mass`); averaging that over the queries that have a target gives the
classic per-head scores:
- `induction_targets(tokens)`: the token after the previous occurrence of the current token
  (induction heads: "A B ... A -> attend to B");
- `repeat_targets(B, T, period)`: the same for a sequence that repeats with a known period
  (random tokens repeated twice: equal to induction_targets on the second half);
- `previous_token_targets(B, T)`: the previous position (previous-token heads).
"""

from __future__ import annotations

import torch

__all__ = ["induction_targets", "previous_token_targets", "repeat_targets", "second_copy_targets"]


def induction_targets(tokens: torch.Tensor) -> torch.Tensor:
    """For each position t: j + 1 for the last j < t with tokens[j] == tokens[t], else -1.

    tokens: integer [B, T]. Returns int64 [B, T, 1] on tokens' device. O(T log T) per row, no
    Python loop over T: a stable sort groups equal tokens with their positions in increasing order,
    so each entry's predecessor in sorted order is the previous occurrence of the same token.
    """
    if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"induction_targets: tokens must be an integer [B, T] tensor, got "
                         f"{tuple(tokens.shape)} {tokens.dtype}")
    B, T = tokens.shape
    sorted_tokens, order = torch.sort(tokens, dim=1, stable=True)  # order: positions, grouped by token
    same_as_prev = torch.zeros_like(sorted_tokens, dtype=torch.bool)
    same_as_prev[:, 1:] = sorted_tokens[:, 1:] == sorted_tokens[:, :-1]
    prev_pos = torch.full_like(order, -1)
    prev_pos[:, 1:] = order[:, :-1]
    target_sorted = torch.where(same_as_prev, prev_pos + 1, torch.full_like(order, -1))
    targets = torch.empty((B, T), dtype=torch.int64, device=tokens.device)
    targets.scatter_(1, order, target_sorted)
    return targets[:, :, None]


def previous_token_targets(batch: int, T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """t - 1 for every position (-1 at t = 0), int64 [batch, T, 1]."""
    t = torch.arange(T, device=device) - 1
    return t.expand(batch, T)[:, :, None].clone()


def repeat_targets(batch: int, T: int, period: int, device: torch.device | str | None = None) -> torch.Tensor:
    """t - period + 1 for t >= period, else -1, int64 [batch, T, 1].

    For a block of `period` tokens repeated, position t >= period holds the token of t - period,
    so an induction head at t attends to the token that followed it: t - period + 1.
    """
    if period < 1:
        raise ValueError(f"repeat_targets: period must be >= 1, got {period}")
    t = torch.arange(T, device=device)
    targets = torch.where(t >= period, t - period + 1, torch.full_like(t, -1))
    return targets.expand(batch, T)[:, :, None].clone()


def second_copy_targets(seq_len: int, periods: torch.Tensor) -> torch.Tensor:
    """Induction targets [n, seq_len, 1] for make_repeat_batch's sequences: t - L + 1 in the second
    copy, -1 elsewhere (the lead-in and the first copy are not scored).

    Unlike repeat_targets (one period, the copies starting at position 0), each sequence
    has its own period L and its second copy ends at the last position.
    """
    t = torch.arange(seq_len, device=periods.device)[None, :]
    L = periods[:, None]
    second = t >= seq_len - L
    return torch.where(second, t - L + 1, -1)[..., None]
