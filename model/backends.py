"""The per-op backend switch: every backend of an op computes the same function.

attention: torch (plain math, the reference), sdpa (torch's fused kernels), flash_attn (the
           flash-attn package, if installed), triton (grokcopy's kernels)
norm, mlp: torch, triton

"auto" picks the fastest available on the tensor's device: the Triton norm and MLP kernels on
CUDA, torch on CPU (Triton runs on CPU only through its interpreter, which is for tests, not
training). Attention stays on sdpa: on an H100 (bench/results/h100-80gb-hbm3-2026-11-25) the model
trained at 302k tokens/s with SDPA and 295k with the Triton attention; `--attention triton` selects it.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class AttentionStats(NamedTuple):
    """Per-query statistics of one attention layer (fp32, not differentiable).

    lse [B, H, T]: log-sum-exp of the scaled scores; entropy [B, H, T]: entropy (nats) of the
    attention distribution; target_mass [B, H, T, K]: probability on each target key (0 for -1).
    """

    lse: torch.Tensor
    entropy: torch.Tensor
    target_mass: torch.Tensor


@functools.cache
def available(op: str, backend: str) -> bool:
    """Whether `backend` can run `op` in this installation (not whether it suits a device)."""
    if backend in ("torch", "sdpa"):
        return True
    if backend == "flash_attn":
        return op == "attention" and importlib.util.find_spec("flash_attn") is not None
    if backend == "triton":
        try:
            import kernels
        except ImportError:
            return False
        name = {"attention": "flash_attention", "norm": "rms_norm", "mlp": "swiglu_packed"}[op]
        return hasattr(kernels, name)
    return False


@functools.cache
def resolve(op: str, backend: str, device_type: str, dropout: bool = False) -> str:
    """The concrete backend for `op` on `device_type`; raises naming the op if it cannot run."""
    if backend == "auto":
        if op == "attention":
            return "sdpa"
        return "triton" if device_type == "cuda" and available(op, "triton") else "torch"
    if not available(op, backend):
        raise ValueError(f"{op} backend {backend!r} is not available here (is its package installed?)")
    if backend in ("flash_attn",) and device_type != "cuda":
        raise ValueError(f"{op} backend {backend!r} needs a CUDA device, the model is on {device_type}")
    if op == "attention" and dropout and backend == "triton":
        raise ValueError("attention backend 'triton' has no attention dropout; use 'sdpa' or 'torch' with dropout")
    return backend


# ---------------------------------------------------------------------------------------------
# Attention. q [B, Hq, T, D]; k, v [B, Hkv, T, D]; causal; returns [B, Hq, T, D].


def _repeat_kv(k: torch.Tensor, n_rep: int) -> torch.Tensor:
    return k if n_rep == 1 else k.repeat_interleave(n_rep, dim=1)


def attention_torch(q, k, v, dropout_p: float = 0.0, targets: torch.Tensor | None = None):
    """Plain math attention: materialises the T x T scores. Returns (out, stats or None).

    Scores and softmax run in fp32 (fp64 for fp64 inputs); the reference for every backend.
    """
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    T, S = q.shape[2], k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 at least, fp64 for a float64 reference
    scores = (q.to(acc) @ k.to(acc).transpose(-2, -1)) / math.sqrt(q.shape[-1])
    # bottom-right aligned causal mask: query i sees keys j <= i + S - T
    future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(S - T + 1)
    scores = scores.masked_fill(future, float("-inf"))
    probs = scores.softmax(dim=-1)
    stats = None
    if targets is not None:
        stats = stats_from_probs(scores, probs, targets)
    probs = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    return (probs @ v.to(acc)).to(q.dtype), stats


def stats_from_probs(scores: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor) -> AttentionStats:
    """AttentionStats from materialised fp32 scores/probs [B, H, T, S] and targets [B, T, K]."""
    lse = scores.logsumexp(dim=-1)
    # H = -sum p log p = lse - sum p s (masked entries have p = 0 and contribute nothing)
    entropy = lse - (probs * scores.masked_fill(probs == 0, 0.0)).sum(-1)
    B, H, T, S = probs.shape
    idx = targets.long().clamp(0, S - 1)[:, None].expand(B, H, T, targets.shape[-1])
    mass = probs.gather(-1, idx).masked_fill((targets < 0)[:, None], 0.0)
    return AttentionStats(lse.detach(), entropy.detach(), mass.detach())


def attention_sdpa(q, k, v, dropout_p: float = 0.0):
    if q.shape[1] != k.shape[1]:
        n_rep = q.shape[1] // k.shape[1]
        k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


def attention_flash_attn(q, k, v, dropout_p: float = 0.0):
    from flash_attn import flash_attn_func  # optional extra `gpu`, imported only when chosen

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=True)
    return out.transpose(1, 2)


def attention(q, k, v, *, backend: str, dropout_p: float = 0.0, targets: torch.Tensor | None = None):
    """Causal attention by `backend` (already resolved). Returns (out [B, Hq, T, D], stats or None).

    With `targets` [B, T, K] the statistics of AttentionStats come back too: the triton backend
    computes them inside its kernel, every other backend through the torch reference.
    """
    if backend == "triton":
        import kernels

        if targets is not None:
            out, stats = kernels.flash_attention_with_stats(q, k, v, targets=targets, causal=True)
            return out, AttentionStats(stats.lse, stats.entropy, stats.target_mass)
        return kernels.flash_attention(q, k, v, causal=True), None
    if backend == "torch":
        return attention_torch(q, k, v, dropout_p, targets)
    if backend == "sdpa":
        out = attention_sdpa(q, k, v, dropout_p)
    elif backend == "flash_attn":
        out = attention_flash_attn(q, k, v, dropout_p)
    else:
        raise ValueError(f"unknown attention backend {backend!r}")
    return out, None if targets is None else attention_stats_chunked(q, k, targets)


# Query rows per chunk of `attention_stats_chunked`: [B, H, 128, S] fp32 scores at a time, 200 MB
# at paper-162m batch 32 (12 heads, S = 1024) where the whole [B, H, T, S] would take 1.6 GB.
STATS_QUERY_CHUNK = 128


@torch.no_grad()
def attention_stats_chunked(q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor) -> AttentionStats:
    """AttentionStats of causal attention, STATS_QUERY_CHUNK query rows at a time, without autograd.

    For the backends whose kernels export no statistics (sdpa, flash_attn): the output comes from
    their kernel and the statistics from here, so no [B, H, T, S] matrix is kept for backward and
    only a chunk of it exists at any time. q [B, Hq, T, D], k [B, Hkv, S, D], targets [B, T, K].
    """
    k = _repeat_kv(k, q.shape[1] // k.shape[1])
    T, S = q.shape[2], k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)
    key_pos = torch.arange(S, device=q.device)
    chunks = []
    for start in range(0, T, STATS_QUERY_CHUNK):
        q_chunk = q[:, :, start : start + STATS_QUERY_CHUNK].to(acc)
        scores = (q_chunk @ k.to(acc).transpose(-2, -1)) / math.sqrt(q.shape[-1])
        query_pos = torch.arange(start, start + q_chunk.shape[2], device=q.device)
        future = key_pos[None, :] > query_pos[:, None] + (S - T)  # bottom-right aligned, as attention_torch
        scores = scores.masked_fill(future, float("-inf"))
        chunks.append(stats_from_probs(scores, scores.softmax(dim=-1), targets[:, start : start + q_chunk.shape[2]]))
    return AttentionStats(*(torch.cat(parts, dim=2) for parts in zip(*chunks, strict=True)))


# ---------------------------------------------------------------------------------------------
# RMSNorm and SwiGLU


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast gives matmuls on x's device, or None when autocast is off there."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    """x [..., D] normalised in fp32, scaled by weight [D] (fp32 parameter).

    Returns x's dtype, or under autocast the autocast dtype: the norm's output only feeds a
    matmul, which would round it to that dtype anyway, so writing it there saves a pass and the
    result is the same bits on either backend.
    """
    out_dtype = autocast_dtype(x)
    if backend == "triton":
        import kernels

        return kernels.rms_norm(x, weight, eps, out_dtype=out_dtype)
    # kernels.rms_norm_reference's math, kept here so the torch backend needs no triton
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    product = torch.promote_types(acc, weight.dtype)
    return (weight.to(product) * normed.to(product)).to(out_dtype or x.dtype)


def add_rms_norm(x, residual, weight, eps: float, backend: str):
    """(rms_norm(x + residual), x + residual): the residual add fused into the norm on triton.

    x is a branch's output (bf16 under autocast), residual the fp32 stream; the sum stays fp32.
    """
    if backend == "triton":
        import kernels

        return kernels.fused_add_rms_norm(x, residual, weight, eps, out_dtype=autocast_dtype(x))
    summed = x + residual
    return rms_norm(summed, weight, eps, backend), summed


def swiglu_packed(gate_up: torch.Tensor, backend: str) -> torch.Tensor:
    """silu(gate_up[..., :I]) * gate_up[..., I:] for gate_up [..., 2I]."""
    if backend == "triton":
        import kernels

        return kernels.swiglu_packed(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
