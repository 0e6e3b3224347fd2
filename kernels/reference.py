"""The plain-PyTorch reference of every op in kernels/: the function each Triton kernel computes,
written to be read. The tests hold the kernels to these in float64; the model's `torch` backend
runs them (model/backends.py), so there is one definition of each op. Needs no Triton.

Each computes at fp32 at least (float64 for float64 inputs) and rounds once to its output dtype,
with the rounding points of the kernels (and of Hugging Face's Llama) marked where they matter.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "AttentionStats",
    "attention_reference",
    "attention_stats_reference",
    "causal_attention_stats",
    "cross_entropy_reference",
    "fused_add_rms_norm_reference",
    "linear_cross_entropy_reference",
    "rms_norm_reference",
    "rotary_reference",
    "swiglu_reference",
]


class AttentionStats(NamedTuple):
    """Per-query attention statistics (all fp32 or wider, no gradient).

    lse:         [B, Hq, T]    log-sum-exp of the scaled scores (natural log; -inf: no visible key).
    entropy:     [B, Hq, T]    entropy in nats of the query's attention distribution.
    target_mass: [B, Hq, T, K] probability the query puts on each of its K target keys; a target
                 outside [0, S) (e.g. -1) means none, mass 0.
    """

    lse: torch.Tensor
    entropy: torch.Tensor
    target_mass: torch.Tensor


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ---------------------------------------------------------------------------------------------
# RMSNorm (kernels/rms_norm.py)


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """RMSNorm over the last dimension, Llama / HF order: statistics in fp32, the normalised row
    rounded to x's dtype, then the weight product computed at fp32 at least and rounded once to
    out_dtype (x's dtype by default). x [..., D], weight [D]."""
    compute_dtype = _compute_dtype(x)
    xf = x.to(compute_dtype)
    normed = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    product_dtype = torch.promote_types(compute_dtype, weight.dtype)
    return (weight.to(product_dtype) * normed.to(product_dtype)).to(out_dtype or x.dtype)


def fused_add_rms_norm_reference(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the sum in the promoted dtype (an fp32 residual stream
    stays fp32 when x is a bf16 branch)."""
    new_residual = x + residual
    return rms_norm_reference(new_residual, weight, eps, out_dtype), new_residual


# ---------------------------------------------------------------------------------------------
# SwiGLU (kernels/swiglu.py)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, in fp32 (float64 for float64 inputs), rounded once to gate's dtype."""
    compute_dtype = _compute_dtype(gate)
    return (F.silu(gate.to(compute_dtype)) * up.to(compute_dtype)).to(gate.dtype)


# ---------------------------------------------------------------------------------------------
# Attention (kernels/flash_attention.py). q [B, Hq, T, D]; k, v [B, Hkv, S, D], Hq a multiple of Hkv.


def _scores(q: torch.Tensor, k: torch.Tensor, causal: bool, softmax_scale: float | None,
            first_query: int = 0, n_queries: int | None = None) -> torch.Tensor:
    """Scaled scores [B, Hq, T, S] at fp32 at least; a causal mask is bottom-right aligned (query i
    sees keys j <= i + S - T) and masked entries are -inf. q may be rows first_query.. of a longer
    query block of n_queries rows (the mask is that block's)."""
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    offset = S - (n_queries or T) + first_query
    dtype = _compute_dtype(q, k)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else softmax_scale
    scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * scale
    if causal:
        rows = torch.arange(T, device=q.device)[:, None]
        cols = torch.arange(S, device=q.device)[None, :]
        scores = scores.masked_fill(cols > rows + offset, float("-inf"))
    return scores


def _softmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, lse): a row with no visible key has probabilities 0 (not NaN) and lse -inf."""
    m = scores.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(scores - m)
    l = e.sum(dim=-1, keepdim=True)
    return e / torch.where(l > 0, l, torch.ones_like(l)), (m + torch.log(l)).squeeze(-1)


@torch.no_grad()
def _stats(probs: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor | None) -> AttentionStats:
    B, Hq, T, S = probs.shape
    entropy = -torch.special.xlogy(probs, probs).sum(dim=-1)
    if targets is None:
        target_mass = probs.new_zeros((B, Hq, T, 0))
    else:
        valid = (targets >= 0) & (targets < S)
        idx = torch.where(valid, targets, 0).long()[:, None].expand(B, Hq, T, targets.shape[-1])
        target_mass = probs.gather(-1, idx) * valid[:, None].to(probs.dtype)
    return AttentionStats(lse.detach(), entropy, target_mass)


def attention_stats_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              targets: torch.Tensor | None = None, causal: bool = True,
                              softmax_scale: float | None = None, dropout_p: float = 0.0
                              ) -> tuple[torch.Tensor, AttentionStats]:
    """softmax(q k^T * scale [+ causal mask]) v with the full score matrix, and the statistics of
    `flash_attention_with_stats` (targets: int [B, T, K] key indices). The output is differentiable
    and in q's dtype; `dropout_p` drops probabilities after the statistics are taken."""
    probs, lse = _softmax(_scores(q, k, causal, softmax_scale))
    stats = _stats(probs, lse, targets)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return torch.matmul(probs, v.to(probs.dtype)).to(q.dtype), stats


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                        softmax_scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Same contract as `flash_attention`, computed with the full score matrix."""
    return attention_stats_reference(q, k, v, None, causal, softmax_scale, dropout_p)[0]


# Query rows per chunk of `causal_attention_stats`: [B, H, 128, S] fp32 scores at a time, 200 MB at
# paper-162m batch 32 (12 heads, S = 1024) where the whole [B, H, T, S] would take 1.6 GB.
STATS_QUERY_CHUNK = 128


@torch.no_grad()
def causal_attention_stats(q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor,
                           chunk: int = STATS_QUERY_CHUNK) -> AttentionStats:
    """The statistics of causal attention alone, `chunk` query rows at a time and without autograd:
    for the backends whose kernels export none (sdpa, flash_attn), so that no [B, H, T, S] matrix
    is kept for backward and only a chunk of it exists at a time."""
    T = q.shape[2]
    parts = []
    for start in range(0, T, chunk):
        rows = slice(start, min(T, start + chunk))
        probs, lse = _softmax(_scores(q[:, :, rows], k, True, None, first_query=start, n_queries=T))
        parts.append(_stats(probs, lse, targets[:, rows]))
    return AttentionStats(*(torch.cat(p, dim=2) for p in zip(*parts, strict=True)))


# ---------------------------------------------------------------------------------------------
# Rotary position embedding (kernels/rotary.py)


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by position, x * cos + rotate_half(x) * sin, with cos and sin [T, D]
    (fp32, halves repeated: HF's layout) rounded to x's dtype first and each operation rounded to
    x's dtype, as Hugging Face's Llama computes it (the kernel rounds once instead)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return x * cos + rotated * sin


# ---------------------------------------------------------------------------------------------
# Linear + cross-entropy (kernels/linear_cross_entropy.py)


def linear_cross_entropy_reference(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of the logits x [..., D] @ weight [V, D]^T against targets [...] (int64),
    the logits materialised and cast to fp32 (float64 stays float64) before the log-softmax, rows
    with target == ignore_index left out of the mean (nan when none is left)."""
    logits = F.linear(x, weight)
    return cross_entropy_reference(logits, targets, ignore_index)


def cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """F.cross_entropy on logits [..., V] cast to fp32 at least, flattened against targets [...]."""
    logits = logits.to(_compute_dtype(logits))
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=ignore_index)
