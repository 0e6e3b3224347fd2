"""FlashAttention-2 in Triton: forward, backward, and a statistics-exporting forward.

Shapes and layout
-----------------
q is [B, Hq, T, D]; k and v are [B, Hkv, S, D], with Hq a multiple of Hkv (grouped-query attention:
query head h reads kv head h // (Hq // Hkv) inside the kernels; nothing is repeated in memory).
Every stride is passed to the kernels, so any layout works without a copy; the model's natural one is
`x.view(B, T, H, D).transpose(1, 2)` (token-major memory). The output is allocated token-major too:
`out` is [B, Hq, T, D] over [B, T, Hq, D] memory, so `out.transpose(1, 2).reshape(B, T, Hq * D)` is
free. Gradients take their input's layout (`torch.empty_like`).

Causal masking with T != S is bottom-right aligned (the convention of FlashAttention-2 and of a KV
cache): query i attends key j iff j <= i + (S - T), i.e. the last query sees every key. When T > S
the first T - S queries see no key at all: their output is 0, their lse is -inf, their entropy and
target mass are 0, and they pass no gradient.

Algorithm (FlashAttention-2, Dao 2023)
--------------------------------------
Forward: one program owns BLOCK_M query rows of one (batch, head). Its q tile, the running row max m,
the running denominator l and the [BLOCK_M, D] output accumulator stay in registers while BLOCK_N-key
tiles of K and V stream past; each tile's probabilities are rescaled onto the current max ("online
softmax"), so the T x S score matrix never exists in memory. The program saves only
lse = m + log(l) per row, which is all the backward needs to rebuild any probability tile exactly.
Backward: a preprocess kernel computes delta_i = sum_d dO_id * O_id (= sum_j P_ij dP_ij); then one
kernel owns a K/V tile and streams query tiles to accumulate dK and dV (looping over the query heads
that share the kv head, so GQA needs no atomics and no reduction afterwards), and another owns a
query tile and streams K/V tiles to accumulate dQ. Both recompute P = exp(S - lse) from the saved lse.

Scores are handled in base 2 (exp2 is the hardware instruction): x = s * softmax_scale * log2(e).
Public lse is natural log.

Statistics (`flash_attention_with_stats`) come from the same forward kernel with WITH_STATS=True:
the entropy is accumulated online alongside m and l (see `_fwd_tile_loop`), a few extra vector ops
per tile; the attention mass on each target key is computed once after the loop from the final m
and l and that key's score (`_store_target_mass`). No T x S memory either way.

TMA (opt-in, GROKCOPY_ATTENTION_TMA=1 on Hopper or newer, or `use_tma=True`): the forward moves its
q, k, v and out tiles through host-built tensor descriptors instead of per-element pointer tiles
(USE_TMA, one constexpr in the same kernel; `_load_tile`). Hopper's copy engine then computes the
addresses and the bounds, which frees the registers the pointer tiles hold (the static sm_90a table
compares both). It stays opt-in until a GPU measures it faster (bench/test_attention.py
test_tma_forward); the interpreter tests check it gives the pointer path's bits.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from grokcopy.kernels._common import (
    autotuned,
    cast_rne,
    check_inputs,
    dot_dtype,
    fp32_scalar,
    interpreting,
    kernel_op,
    launch,
)
from grokcopy.kernels.reference import AttentionStats, attention_reference, attention_stats_reference

__all__ = [
    "AttentionStats",
    "SUPPORTED_HEAD_DIMS",
    "attention_reference",
    "attention_stats_reference",
    "flash_attention",
    "flash_attention_backward",
    "flash_attention_forward",
    "flash_attention_with_stats",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 96, 128)
# Compile-time constants usable inside kernels (a @triton.jit function may only read constexpr globals).
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # log2(e): natural-log scores -> base 2
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)  # ln(2): base-2 logs -> natural log


# --------------------------------------------------------------------------------------------------
# Launch configurations. One visible list per kernel; the interpreter gets a single small config
# (autotuning there would re-run every config through Python), with BLOCK_M != BLOCK_N so the tests
# exercise the index arithmetic of unequal tiles, partial tiles and several tiles per row.
# GROKCOPY_AUTOTUNE=0 keeps only the first config of each list on a GPU (`autotuned`).
# --------------------------------------------------------------------------------------------------


def _set_descriptor_blocks(nargs: dict) -> None:
    """Autotune pre-hook of the forward: a TMA descriptor's block shape is the launch config's tile."""
    if nargs.get("QD") is None:
        return
    bm, bn, bd = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_D"]
    nargs["QD"].block_shape = nargs["OD"].block_shape = [1, 1, bm, bd]
    nargs["KD"].block_shape = nargs["VD"].block_shape = [1, 1, bn, bd]


def _fwd_configs(tma: bool) -> list[triton.Config]:
    """The forward's list; with `tma` each config also sets the descriptors' tiles (a pre-hook, which
    inductor cannot run: hence a separate autotuner for the opt-in TMA path, see FWD_KERNELS)."""
    hook = _set_descriptor_blocks if tma else None
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=1, num_stages=1, pre_hook=hook)]
    shapes = [(64, 64, 4), (128, 128, 8), (128, 64, 8), (128, 64, 4), (128, 32, 4), (64, 32, 4)]
    return autotuned([
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=hook)
        for bm, bn, w in shapes
        for s in (2, 3, 4)
    ])


def _bwd_dkdv_configs() -> list[triton.Config]:
    # BLOCK_N keys stay resident (k, v, dk, dv: four [BLOCK_N, D] tiles); BLOCK_M queries stream.
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=1, num_stages=1)]
    # Four [BLOCK_N, D] tiles live in registers, so large BLOCK_N spills at D = 128 (ptxas, sm_90):
    # the list leans to small tiles; (32, 128, 8) is the fastest shape at D = 64 in the tutorial.
    shapes = [(32, 64, 8), (16, 32, 4), (32, 32, 4), (16, 64, 4), (64, 64, 8), (32, 128, 8)]
    return autotuned([
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w in shapes
        for s in (2, 3)
    ])


def _bwd_dq_configs() -> list[triton.Config]:
    # BLOCK_M queries stay resident (q, dO, dq); BLOCK_N keys stream.
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    shapes = [(64, 32, 4), (128, 32, 8), (128, 64, 8), (64, 64, 4), (128, 16, 4)]
    return autotuned([
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w in shapes
        for s in (2, 3, 4)
    ])


def _prune_spilling(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop the configs that spill registers or overflow shared memory at this launch's head dim.

    Rules read off the static sm_90a table (bench/results/static-sm90a, `python -m bench.static_sm90`):
    - 128 query rows on 4 warps hold 128 fp32 accumulator columns per thread at head dim 128, and
      spill through pointers (24-196 bytes in the forward, 8 in dq); through TMA descriptors
      (USE_TMA) the pointer tiles leave the registers and they fit (at most 252, no spill);
    - with statistics, 128 query rows need 8 warps either way (on 4 they spill 12-340 bytes), and
      through pointers a 128 x 128 tile spills even then (36-128 bytes);
    - a 128 x 128 tile at head dim 128 with 4 pipeline stages asks for 288 KB of shared memory
      (227 KB is the most a block may have on Hopper), so it never launches.
    """
    head_dim, with_stats = kwargs.get("HEAD_DIM", 0), kwargs.get("WITH_STATS", False)
    use_tma = kwargs.get("USE_TMA", False)

    def keep(c: triton.Config) -> bool:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if with_stats and bm > 64 and (c.num_warps < 8 or (bn >= 128 and not use_tma)):
            return False
        if bm >= 128 and c.num_warps < 8 and head_dim >= 128 and not use_tma:
            return False
        return not (head_dim >= 128 and bm * bn >= 128 * 128 and c.num_stages > 3)

    return [c for c in configs if keep(c)] or configs[:1]


# Autotune keys: the compile-time shape, plus a power-of-two length bucket so that evals sweeping
# many sequence lengths reuse one tuning per bucket instead of re-tuning for every length.
_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "LEN_BUCKET"]


# --------------------------------------------------------------------------------------------------
# Small device helpers.
# --------------------------------------------------------------------------------------------------


@triton.jit
def _head_base(X, b, h, stride_b, stride_h):
    """Pointer to sequence b, head h of a [B, H, T, D] tensor; int64 so that b * stride_b cannot
    overflow 2**31 elements on long sequences."""
    return X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def _tile(base, rows, offs_d, stride_t, stride_d):
    """Pointers [len(rows), len(offs_d)] of a row tile under one head's `base` (see _head_base)."""
    return base + rows[:, None] * stride_t + offs_d[None, :] * stride_d


@triton.jit
def _load_rows(ptrs, rows, n_rows, offs_d, CHECK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Load a [R, BLOCK_D] tile whose rows are `rows`; padding (rows >= n_rows, d >= HEAD_DIM) reads 0.

    Masks are built only where they can be false: a mask along the contiguous head dim would stop
    the compiler from vectorising the load, so it exists only when D is padded up to BLOCK_D.
    """
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def _load_tile(desc, b, h, start, ptrs, rows, n_rows, offs_d, CHECK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, USE_TMA: tl.constexpr):
    """Rows [start, start + BLOCK_R) of head (b, h): through the TMA descriptor `desc` of the whole
    [B, H, T, D] tensor when USE_TMA (the copy engine fills rows past the end and columns past D
    with 0, so no mask), else through `ptrs` (see _load_rows)."""
    if USE_TMA:
        x = desc.load([b, h, start, 0]).reshape(BLOCK_R, BLOCK_D)
    else:
        x = _load_rows(ptrs, rows, n_rows, offs_d, CHECK_ROWS, HEAD_DIM, BLOCK_D)
    return x


@triton.jit
def _store_rows(ptrs, x, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store a [R, BLOCK_D] tile, skipping padded rows and padded head-dim columns."""
    if HEAD_DIM == BLOCK_D:
        tl.store(ptrs, x, mask=rows[:, None] < n_rows)
    else:
        tl.store(ptrs, x, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _key_ranges(start_m, T, S, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key ranges for the query rows [start_m, start_m + BLOCK_M): returns (full_hi, hi).

    Keys [0, full_hi) form whole BLOCK_N tiles that every row of the tile may see and that lie
    inside S: they need no mask at all. Keys [full_hi, hi) need a mask (the causal diagonal crosses
    them, or they run past S). Keys >= hi are invisible to every row and are never loaded.
    Values are clamped to >= 0 before dividing, so integer division never sees a negative number
    (C and Python round those differently, i.e. GPU and interpreter would disagree).
    """
    if CAUSAL:
        # Row i sees keys j <= i + (S - T) (bottom-right aligned).
        first_row_limit = tl.minimum(start_m + (S - T) + 1, S)
        full_hi = (tl.maximum(first_row_limit, 0) // BLOCK_N) * BLOCK_N
        hi = tl.maximum(tl.minimum(start_m + BLOCK_M + (S - T), S), 0)
    else:
        full_hi = (S // BLOCK_N) * BLOCK_N
        hi = S
    return full_hi, hi


# --------------------------------------------------------------------------------------------------
# Forward.
# --------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_tile_loop(acc, l_i, m_i, ent_i, q, k_base, v_base, stride_ks, stride_vs,
                   KD, VD, b, kvh, offs_m, offs_d, lo, hi, T, S, qk_scale,
                   MASKED: tl.constexpr, CAUSAL: tl.constexpr, WITH_STATS: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   USE_TMA: tl.constexpr):
    """Stream key tiles [lo, hi) past one query tile, updating the online-softmax state.

    State per query row, all fp32 in registers:
      m_i     running max of the base-2 scores x = s * scale * log2(e)
      l_i     sum_j 2^(x_j - m_i)                      (softmax denominator, relative to m_i)
      acc     sum_j 2^(x_j - m_i) v_j                  ([BLOCK_M, BLOCK_D])
      ent_i   sum_j 2^(x_j - m_i) (x_j - m_i)          (WITH_STATS: for the entropy)
    When the max moves from m to m', every sum is rescaled by alpha = 2^(m - m'); ent_i also shifts
    its reference point: sum 2^(x - m')(x - m') = alpha * (ent_i + (m - m') * l_i). Keeping ent_i
    relative to the running max (rather than summing p * s) avoids the cancellation of
    lse - E[s] when scores are large and the entropy small.
    """
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _load_tile(KD, b, kvh, start_n, k_base + cols[:, None] * stride_ks, cols, S, offs_d,
                       MASKED, HEAD_DIM, BLOCK_D, BLOCK_N, USE_TMA).to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N] fp32
        if MASKED:
            # Only tiles on the causal diagonal or past S get here; all others skip the select.
            valid = cols[None, :] < S
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + (S - T))
            s = tl.where(valid, s, float("-inf"))
        # softmax_scale > 0, so the max commutes with the scaling and x - m is one FMA per score.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        x_rel = s * qk_scale - m_new[:, None]  # x - m_new: <= 0, -inf where masked
        p = tl.exp2(x_rel)  # masked entries: 2^-inf = 0
        l_new = l_i * alpha + tl.sum(p, 1)
        if WITH_STATS:
            if MASKED:
                p_x = p * tl.where(valid, x_rel, 0.0)  # p = 0 there; 0 * -inf would be NaN
            else:
                p_x = p * x_rel
            ent_i = alpha * (ent_i + (m_i - m_new) * l_i) + tl.sum(p_x, 1)
        v = _load_tile(VD, b, kvh, start_n, v_base + cols[:, None] * stride_vs, cols, S, offs_d,
                       MASKED, HEAD_DIM, BLOCK_D, BLOCK_N, USE_TMA).to(DOT_DTYPE)
        acc = tl.dot(p.to(DOT_DTYPE), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        l_i = l_new
        m_i = m_new
    return acc, l_i, m_i, ent_i


@triton.jit
def _store_target_mass(TargetMass, Targets, q_base, k_head, stride_qt, stride_qd, stride_ks, stride_kd, b,
                       stat_offs, offs_m, m_i, l_i, stride_tb, stride_tt, T, S, qk_scale, CAUSAL: tl.constexpr,
                       N_TARGETS: tl.constexpr, TARGETS_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """Attention mass on each target key, written after the key loop from the final softmax state.

    p_ij = 2^(x_ij - m_i) / l_i needs only the score of key j = target: one [BLOCK_M, D] gather of
    the target keys and a row-wise dot with q per target, D multiply-adds per row. Accumulating it
    inside the loop instead costs a compare, select and row sum over every [BLOCK_M, BLOCK_N] score
    tile per target, i.e. T per row, which made the statistics forward 1.3-1.5x the plain one on
    an H100. The score is the q . k of the loop in another summation order (fp32 either way), read
    32 head dims at a time with q reloaded (L2-hot) rather than kept: a whole fp32 q tile and key
    tile would hold 2 * BLOCK_M * D / threads registers each. A target outside [0, S) (folded to -1
    by the launcher) or above the causal limit gets mass 0.
    """
    D_CHUNK: tl.constexpr = 32 if BLOCK_D > 32 else BLOCK_D
    offs_c = tl.arange(0, D_CHUNK)
    offs_k = tl.arange(0, TARGETS_BLOCK)
    row_ok = offs_m < T
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    tmass = tl.zeros([BLOCK_M, TARGETS_BLOCK], dtype=tl.float32)
    for kk in tl.static_range(N_TARGETS):
        tgt = tl.load(Targets + b.to(tl.int64) * stride_tb + offs_m * stride_tt + kk, mask=row_ok, other=-1)
        visible = row_ok & (tgt >= 0) & (l_i > 0.0)
        if CAUSAL:
            visible = visible & (tgt <= offs_m + (S - T))
        dot = tl.zeros([BLOCK_M], dtype=tl.float32)
        for d0 in tl.static_range(0, BLOCK_D, D_CHUNK):
            cols = d0 + offs_c
            mask = visible[:, None] & (cols[None, :] < HEAD_DIM)
            q_c = tl.load(_tile(q_base, offs_m, cols, stride_qt, stride_qd), mask=mask, other=0.0).to(tl.float32)
            k_c = tl.load(_tile(k_head, tgt, cols, stride_ks, stride_kd), mask=mask, other=0.0).to(tl.float32)
            dot += tl.sum(q_c * k_c, 1)
        x_t = dot * qk_scale
        p_t = tl.exp2(tl.where(visible, x_t - m_i, float("-inf"))) / l_safe  # 0 where not visible
        tmass += tl.where(offs_k[None, :] == kk, p_t[:, None], 0.0)
    tl.store(TargetMass + stat_offs[:, None] * N_TARGETS + offs_k[None, :], tmass,
             mask=row_ok[:, None] & (offs_k[None, :] < N_TARGETS))


@triton.jit
def flash_attention_fwd_kernel(
    Q, K, V, Out, Lse, Entropy, TargetMass, Targets, QD, KD, VD, OD,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_tb, stride_tt,
    n_heads, group_size, T, S, softmax_scale,
    LEN_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    WITH_STATS: tl.constexpr, N_TARGETS: tl.constexpr, TARGETS_BLOCK: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, query head). Grid (B * Hq, cdiv(T, BLOCK_M)).

    Lse/Entropy are contiguous fp32 [B, Hq, T]; TargetMass contiguous fp32 [B, Hq, T, N_TARGETS];
    Targets int32 [B, T, N_TARGETS] with unit last stride (-1: none). Stats pointers are unused
    unless WITH_STATS. With USE_TMA, q, k, v and out move through the TMA descriptors QD, KD, VD, OD
    of the same tensors (4-D, block [1, 1, tile rows, BLOCK_D]; see `_tma_descriptors`) instead of
    per-element pointers: the copy engine computes the addresses and bounds, which frees the
    registers that the pointer tiles hold; otherwise they are None.
    """
    pid_bh = tl.program_id(0)
    if CAUSAL:
        # Causal tiles further down do more work: start them first (longest-job-first scheduling
        # keeps the last wave of programs short).
        pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    else:
        pid_m = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    kvh = h // group_size
    start_m = pid_m * BLOCK_M

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = _head_base(Q, b, h, stride_qb, stride_qh)
    # [1, BLOCK_D] pointers to the head dims of key/value row 0; the tile loops add row offsets.
    k_base = _head_base(K, b, kvh, stride_kb, stride_kh) + offs_d[None, :] * stride_kd
    v_base = _head_base(V, b, kvh, stride_vb, stride_vh) + offs_d[None, :] * stride_vd

    # The q tile is loaded once and stays in registers for the whole key loop.
    q = _load_tile(QD, b, h, start_m, _tile(q_base, offs_m, offs_d, stride_qt, stride_qd), offs_m, T,
                   offs_d, True, HEAD_DIM, BLOCK_D, BLOCK_M, USE_TMA).to(DOT_DTYPE)
    softmax_scale = fp32_scalar(softmax_scale)
    qk_scale = softmax_scale * LOG2E  # fold log2(e) in: exp(s) = 2^(s * log2(e))

    # The running max starts finite on purpose: a row whose keys so far are all masked keeps
    # m = -1e30, so x - m = -inf - (-1e30) = -inf (p = 0) and m_old - m_new = 0, where a -inf start
    # would give -inf - (-inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    ent_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Two passes over the keys. First the whole tiles that every row of this tile may see: no mask.
    # Then the few tiles that the causal diagonal (or the end of S) cuts through: masked. Tiles above
    # the diagonal are never visited, which is the 2x saving of causal attention. The split matters
    # because on tensor-core GPUs the per-score vector work (FMA, exp2, max, sum) costs about as much
    # as the matmuls: a mask (compare, and, select per score) on every tile would add a large
    # fraction of it, yet with 128-query and 64-key tiles at T = 4096 only 2 or 3 of the ~32 tiles
    # a query tile visits on average need one. Two loops also software-pipeline separately.
    full_hi, hi = _key_ranges(start_m, T, S, CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i, ent_i = _fwd_tile_loop(
        acc, l_i, m_i, ent_i, q, k_base, v_base, stride_ks, stride_vs,
        KD, VD, b, kvh, offs_m, offs_d, 0, full_hi, T, S, qk_scale,
        False, CAUSAL, WITH_STATS, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_DTYPE, DOT_PRECISION, USE_TMA)
    acc, l_i, m_i, ent_i = _fwd_tile_loop(
        acc, l_i, m_i, ent_i, q, k_base, v_base, stride_ks, stride_vs,
        KD, VD, b, kvh, offs_m, offs_d, full_hi, hi, T, S, qk_scale,
        True, CAUSAL, WITH_STATS, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_DTYPE, DOT_PRECISION, USE_TMA)

    # Epilogue: normalise. l_i == 0 only for rows that saw no key (causal with T > S): output 0.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    out = cast_rne(out, Out.dtype.element_ty)
    if USE_TMA:  # rows past T and columns past D are clipped by the copy engine
        OD.store([b, h, start_m, 0], out.reshape(1, 1, BLOCK_M, BLOCK_D))
    else:
        _store_rows(_tile(_head_base(Out, b, h, stride_ob, stride_oh), offs_m, offs_d, stride_ot, stride_od),
                    out, offs_m, T, offs_d, HEAD_DIM, BLOCK_D)
    row_mask = offs_m < T
    stat_offs = pid_bh.to(tl.int64) * T + offs_m
    # Natural-log lse; -inf for rows that saw no key (written out rather than as log2(0)).
    lse = tl.where(l_i > 0.0, (m_i + tl.log2(l_safe)) * LN2, float("-inf"))
    tl.store(Lse + stat_offs, lse, mask=row_mask)
    if WITH_STATS:
        # H = -sum p ln p = ln l - sum_j 2^(x_j - m)(x_j - m) ln2 / l; both terms 0 for empty rows.
        entropy = (tl.log2(l_safe) - ent_i / l_safe) * LN2
        tl.store(Entropy + stat_offs, entropy, mask=row_mask)
        if N_TARGETS > 0:
            _store_target_mass(TargetMass, Targets, q_base, _head_base(K, b, kvh, stride_kb, stride_kh), stride_qt,
                               stride_qd, stride_ks, stride_kd, b, stat_offs, offs_m, m_i, l_i, stride_tb, stride_tt,
                               T, S, qk_scale, CAUSAL, N_TARGETS, TARGETS_BLOCK, HEAD_DIM, BLOCK_D, BLOCK_M)


# The forward autotuned through pointers, and through TMA descriptors (opt-in; eager only, as its
# configs carry a pre-hook): the same kernel and the same configs either way.
FWD_KERNELS = {
    tma: triton.autotune(configs=_fwd_configs(tma), key=_TUNE_KEY + ["WITH_STATS", "N_TARGETS"],
                         prune_configs_by={"early_config_prune": _prune_spilling})(flash_attention_fwd_kernel)
    for tma in (False, True)
}


# --------------------------------------------------------------------------------------------------
# Backward.
# --------------------------------------------------------------------------------------------------


@triton.jit
def flash_attention_bwd_preprocess_kernel(
    Out, DOut, Delta,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_db, stride_dh, stride_dt, stride_dd,
    n_heads, T,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta[b, h, t] = sum_d dO * O (fp32, contiguous [B, Hq, T]). Grid (B * Hq, cdiv(T, BLOCK_M)).

    sum_j P_ij dP_ij = sum_j P_ij (dO_i . v_j) = dO_i . O_i, so the softmax backward's row term is a
    D-length dot per row instead of an S-length one inside the main loops.
    """
    pid_bh = tl.program_id(0)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_rows(_tile(_head_base(Out, b, h, stride_ob, stride_oh), offs_m, offs_d, stride_ot, stride_od),
                   offs_m, T, offs_d, True, HEAD_DIM, BLOCK_D).to(tl.float32)
    do = _load_rows(_tile(_head_base(DOut, b, h, stride_db, stride_dh), offs_m, offs_d, stride_dt, stride_dd),
                    offs_m, T, offs_d, True, HEAD_DIM, BLOCK_D).to(tl.float32)
    tl.store(Delta + pid_bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def _load_row_stats(Lse, Delta, stat_base, rows, T):
    """Base-2 lse and delta of query rows. Rows with no visible key (lse = -inf) and padding rows
    get lse = +inf, so every probability recomputed for them is 2^-inf = 0 without a mask."""
    lse = tl.load(Lse + stat_base + rows, mask=rows < T, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    delta = tl.load(Delta + stat_base + rows, mask=rows < T, other=0.0)
    return lse2, delta


@triton.jit
def _bwd_dkdv_tile_loop(dk, dv, k, v, q_base, do_base, Lse, Delta, stat_base, stride_qt, stride_qd,
                        stride_dot, stride_dod, offs_n, offs_d, lo, hi, T, S, qk_scale,
                        MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_M: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dk, dv ([BLOCK_N, BLOCK_D] fp32) over query tiles [lo, hi) of one query head."""
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m0
        q = _load_rows(_tile(q_base, rows, offs_d, stride_qt, stride_qd), rows, T,
                       offs_d, True, HEAD_DIM, BLOCK_D).to(DOT_DTYPE)
        do = _load_rows(_tile(do_base, rows, offs_d, stride_dot, stride_dod), rows, T,
                        offs_d, True, HEAD_DIM, BLOCK_D).to(DOT_DTYPE)
        lse2, delta = _load_row_stats(Lse, Delta, stat_base, rows, T)
        # Recompute P^T from the saved lse: exact softmax probabilities, no running max needed.
        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        pT = tl.exp2(sT * qk_scale - lse2[None, :])
        if MASKED:
            pT = tl.where(offs_n[:, None] <= rows[None, :] + (S - T), pT, 0.0)
        dv = tl.dot(pT.to(DOT_DTYPE), do, dv, input_precision=DOT_PRECISION)
        # dS = P * (dP - delta), dP = dO v^T.
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(DOT_DTYPE), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.autotune(configs=_bwd_dkdv_configs(), key=_TUNE_KEY)
@triton.jit
def flash_attention_bwd_dkdv_kernel(
    Q, K, V, DOut, Lse, Delta, DK, DV,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_dkb, stride_dkh, stride_dks, stride_dkd,
    stride_dvb, stride_dvh, stride_dvs, stride_dvd,
    n_kv_heads, group_size, T, S, softmax_scale,
    LEN_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK, dV for BLOCK_N keys of one (batch, kv head). Grid (B * Hkv, cdiv(S, BLOCK_N)).

    k, v and the dk, dv accumulators stay in registers; query tiles of every query head in the
    group stream past (so dk/dv are summed over the group here, deterministically). Works on the
    transposed score tile sT = k q^T ([BLOCK_N, BLOCK_M]) so that dv += P^T dO and dk += dS^T q
    need no transposes of P or dS.
    """
    pid_bh = tl.program_id(0)
    b = pid_bh // n_kv_heads
    kvh = pid_bh % n_kv_heads
    start_n = tl.program_id(1) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(_tile(_head_base(K, b, kvh, stride_kb, stride_kh), offs_n, offs_d, stride_ks, stride_kd),
                   offs_n, S, offs_d, True, HEAD_DIM, BLOCK_D).to(DOT_DTYPE)
    v = _load_rows(_tile(_head_base(V, b, kvh, stride_vb, stride_vh), offs_n, offs_d, stride_vs, stride_vd),
                   offs_n, S, offs_d, True, HEAD_DIM, BLOCK_D).to(DOT_DTYPE)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    softmax_scale = fp32_scalar(softmax_scale)
    qk_scale = softmax_scale * LOG2E

    # Query rows that see these keys. Row i sees key j iff i >= j - (S - T).
    if CAUSAL:
        # First query tile that sees any of the keys, and the first row that sees all of them:
        # tiles in between straddle the diagonal and need the mask; tiles after it do not.
        lo = (tl.maximum(start_n - (S - T), 0) // BLOCK_M) * BLOCK_M
        full_row = tl.maximum(start_n + BLOCK_N - 1 - (S - T), 0)
        mask_hi = tl.minimum(tl.cdiv(full_row, BLOCK_M) * BLOCK_M, T)
        mask_hi = tl.maximum(mask_hi, lo)
    else:
        lo = 0
        mask_hi = 0
    # Padding keys (>= S) need no mask here: their dk/dv rows are never stored, and each dk/dv row
    # depends only on its own key. Padding query rows read dO = 0, delta = 0 and lse = +inf: p = 0.
    for g in range(group_size):
        h = kvh * group_size + g
        q_base = _head_base(Q, b, h, stride_qb, stride_qh)
        do_base = _head_base(DOut, b, h, stride_dob, stride_doh)
        stat_base = (b * n_kv_heads * group_size + h).to(tl.int64) * T
        dk, dv = _bwd_dkdv_tile_loop(
            dk, dv, k, v, q_base, do_base, Lse, Delta, stat_base, stride_qt, stride_qd, stride_dot,
            stride_dod, offs_n, offs_d, lo, mask_hi, T, S, qk_scale,
            CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_DTYPE, DOT_PRECISION)
        dk, dv = _bwd_dkdv_tile_loop(
            dk, dv, k, v, q_base, do_base, Lse, Delta, stat_base, stride_qt, stride_qd, stride_dot,
            stride_dod, offs_n, offs_d, mask_hi, T, T, S, qk_scale,
            False, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_DTYPE, DOT_PRECISION)

    # s = softmax_scale * q.k, so dL/dk = softmax_scale * sum_i dS_ij q_i.
    dk = dk * softmax_scale
    _store_rows(_tile(_head_base(DK, b, kvh, stride_dkb, stride_dkh), offs_n, offs_d, stride_dks, stride_dkd),
                cast_rne(dk, DK.dtype.element_ty), offs_n, S, offs_d, HEAD_DIM, BLOCK_D)
    _store_rows(_tile(_head_base(DV, b, kvh, stride_dvb, stride_dvh), offs_n, offs_d, stride_dvs, stride_dvd),
                cast_rne(dv, DV.dtype.element_ty), offs_n, S, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _bwd_dq_tile_loop(dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                      lo, hi, T, S, qk_scale,
                      MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr,
                      DOT_PRECISION: tl.constexpr):
    """Accumulate dq ([BLOCK_M, BLOCK_D] fp32) over key tiles [lo, hi)."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _load_rows(k_base + cols[:, None] * stride_ks, cols, S, offs_d, MASKED, HEAD_DIM,
                       BLOCK_D).to(DOT_DTYPE)
        v = _load_rows(v_base + cols[:, None] * stride_vs, cols, S, offs_d, MASKED, HEAD_DIM,
                       BLOCK_D).to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale - lse2[:, None])
        if MASKED:
            valid = cols[None, :] < S
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + (S - T))
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(DOT_DTYPE), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=_bwd_dq_configs(), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune_spilling})
@triton.jit
def flash_attention_bwd_dq_kernel(
    Q, K, V, DOut, Lse, Delta, DQ,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_dqb, stride_dqh, stride_dqt, stride_dqd,
    n_heads, group_size, T, S, softmax_scale,
    LEN_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ for BLOCK_M query rows of one (batch, query head). Grid (B * Hq, cdiv(T, BLOCK_M)).

    q, dO, lse, delta and the dq accumulator stay in registers; K/V tiles stream past over the same
    two key ranges as the forward (unmasked whole tiles, then masked diagonal/boundary tiles).
    """
    pid_bh = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # longest tiles first, as in the forward
    else:
        pid_m = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    kvh = h // group_size
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(_tile(_head_base(Q, b, h, stride_qb, stride_qh), offs_m, offs_d, stride_qt, stride_qd),
                   offs_m, T, offs_d, True, HEAD_DIM, BLOCK_D).to(DOT_DTYPE)
    do = _load_rows(_tile(_head_base(DOut, b, h, stride_dob, stride_doh), offs_m, offs_d, stride_dot, stride_dod),
                    offs_m, T, offs_d, True, HEAD_DIM, BLOCK_D).to(DOT_DTYPE)
    lse2, delta = _load_row_stats(Lse, Delta, pid_bh.to(tl.int64) * T, offs_m, T)
    k_base = _head_base(K, b, kvh, stride_kb, stride_kh) + offs_d[None, :] * stride_kd
    v_base = _head_base(V, b, kvh, stride_vb, stride_vh) + offs_d[None, :] * stride_vd
    softmax_scale = fp32_scalar(softmax_scale)
    qk_scale = softmax_scale * LOG2E
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    full_hi, hi = _key_ranges(start_m, T, S, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_dq_tile_loop(dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                           0, full_hi, T, S, qk_scale,
                           False, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_DTYPE, DOT_PRECISION)
    dq = _bwd_dq_tile_loop(dq, q, do, lse2, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                           full_hi, hi, T, S, qk_scale,
                           True, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_DTYPE, DOT_PRECISION)
    dq = dq * softmax_scale
    _store_rows(_tile(_head_base(DQ, b, h, stride_dqb, stride_dqh), offs_m, offs_d, stride_dqt, stride_dqd),
                cast_rne(dq, DQ.dtype.element_ty), offs_m, T, offs_d, HEAD_DIM, BLOCK_D)


# --------------------------------------------------------------------------------------------------
# Launchers.
# --------------------------------------------------------------------------------------------------


def _check_attention_inputs(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            softmax_scale: float | None) -> float:
    """Validate q [B, Hq, T, D], k/v [B, Hkv, S, D]; return the softmax scale to use."""
    check_inputs(name, q, k, v)
    for label, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name}: {label} must be 4-D [B, H, T, D], got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    (B, Hq, T, D), (Bk, Hkv, S, Dk) = q.shape, k.shape
    if Bk != B or Dk != D:
        raise ValueError(f"{name}: q {tuple(q.shape)} and k/v {tuple(k.shape)} must agree on batch and head dim")
    if Hq % Hkv != 0:
        raise ValueError(f"{name}: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{name}: head dim {D} is not supported; supported: {list(SUPPORTED_HEAD_DIMS)}")
    if min(B, Hkv, T, S) == 0:
        raise ValueError(f"{name}: empty input (q {tuple(q.shape)}, k/v {tuple(k.shape)})")
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)
    if not scale > 0.0:
        raise ValueError(f"{name}: softmax_scale must be positive, got {softmax_scale}")
    return scale


def _check_targets(name: str, targets: torch.Tensor, q: torch.Tensor) -> None:
    B, _, T, _ = q.shape
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: targets must be an int32/int64 tensor [B, T, K]")
    if targets.dim() != 3 or targets.shape[:2] != (B, T):
        raise ValueError(f"{name}: targets must be [B, T, K] = [{B}, {T}, K], got {tuple(targets.shape)}")
    if targets.device != q.device:
        raise ValueError(f"{name}: targets are on {targets.device} but q is on {q.device}")


def _check_buffer(name: str, label: str, buf: torch.Tensor, shape: tuple, dtype: torch.dtype,
                  device: torch.device, contiguous: bool) -> torch.Tensor:
    """Validate a caller-supplied output buffer (used by tests to pre-fill outputs with NaN)."""
    if tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or buf.device != device:
        raise ValueError(f"{name}: {label} must be {tuple(shape)} {dtype} on {device}, "
                         f"got {tuple(buf.shape)} {buf.dtype} on {buf.device}")
    if contiguous and not buf.is_contiguous():
        raise ValueError(f"{name}: {label} must be contiguous")
    return buf


def _len_bucket(T: int, S: int) -> int:
    return triton.next_power_of_2(max(T, S))


def flash_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    with_stats: bool = False,
    targets: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    target_mass: torch.Tensor | None = None,
    use_tma: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run the forward kernel (no autograd). Returns (out, lse, entropy, target_mass).

    q [B, Hq, T, D], k/v [B, Hkv, S, D] (fp32/fp16/bf16, any strides). out has q's shape and dtype,
    allocated over [B, T, Hq, D] memory unless given; lse is fp32 [B, Hq, T]. With `with_stats`
    (implied by `targets`), entropy is fp32 [B, Hq, T] and target_mass fp32 [B, Hq, T, K] for
    integer `targets` [B, T, K] of key indices (any index outside [0, S), e.g. -1, means none);
    otherwise both are None. Optional output buffers are written in full (lse/entropy/target_mass
    must be contiguous). `use_tma`: move q, k, v and out through TMA descriptors (see
    `_tma_descriptors`); None takes GROKCOPY_ATTENTION_TMA=1 on a Hopper-or-newer GPU, else off.
    """
    name = "flash_attention"
    scale = _check_attention_inputs(name, q, k, v, softmax_scale)
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    with_stats = with_stats or targets is not None
    n_targets = 0
    if targets is not None:
        _check_targets(name, targets, q)
        n_targets = targets.shape[2]
        # int32, unit last stride, and every index outside [0, S) folded to -1 so that huge int64
        # values cannot wrap into a valid column.
        targets = torch.where((targets >= 0) & (targets < S), targets, -1).to(torch.int32).contiguous()

    dev = q.device
    if out is None:
        out = torch.empty((B, T, Hq, D), dtype=q.dtype, device=dev).transpose(1, 2)
    _check_buffer(name, "out", out, (B, Hq, T, D), q.dtype, dev, contiguous=False)
    lse = _check_buffer(name, "lse", lse if lse is not None else
                        torch.empty((B, Hq, T), dtype=torch.float32, device=dev),
                        (B, Hq, T), torch.float32, dev, contiguous=True)
    if with_stats:
        entropy = _check_buffer(name, "entropy", entropy if entropy is not None else
                                torch.empty((B, Hq, T), dtype=torch.float32, device=dev),
                                (B, Hq, T), torch.float32, dev, contiguous=True)
        target_mass = _check_buffer(name, "target_mass", target_mass if target_mass is not None else
                                    torch.empty((B, Hq, T, n_targets), dtype=torch.float32, device=dev),
                                    (B, Hq, T, n_targets), torch.float32, dev, contiguous=True)
    else:
        entropy = target_mass = None
    # Unused pointer arguments get a real tensor so that every launch has the same signature kind.
    ent_arg = entropy if entropy is not None else lse
    tm_arg = target_mass if target_mass is not None and n_targets > 0 else lse
    tgt_arg = targets if n_targets > 0 else lse
    stride_tb, stride_tt = (targets.stride(0), targets.stride(1)) if n_targets > 0 else (0, 0)

    descriptors = _tma_descriptors(q, k, v, out, use_tma)

    grid = lambda meta: (B * Hq, triton.cdiv(T, meta["BLOCK_M"]))
    # The TMA autotuner's pre-hook is refused by torch's wrapper: always bare (never traced, see
    # _tma_descriptors).
    kernel = FWD_KERNELS[True] if descriptors is not None else launch(FWD_KERNELS[False], q)
    kernel[grid](
        q, k, v, out, lse, ent_arg, tm_arg, tgt_arg, *(descriptors or (None,) * 4),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        stride_tb, stride_tt,
        Hq, Hq // Hkv, T, S, scale,
        _len_bucket(T, S),
        HEAD_DIM=D, BLOCK_D=triton.next_power_of_2(D), CAUSAL=bool(causal),
        WITH_STATS=with_stats, N_TARGETS=n_targets,
        TARGETS_BLOCK=triton.next_power_of_2(max(n_targets, 1)),
        DOT_DTYPE=dot_dtype(q.dtype), DOT_PRECISION=_dot_precision(q.dtype), USE_TMA=descriptors is not None,
    )
    return out, lse, entropy, target_mass


def _tma_descriptors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                     use_tma: bool | None) -> tuple | None:
    """Host-side TMA descriptors of the 4-D q, k, v, out (the tiles are set per launch config by
    `_set_descriptor_blocks`), or None to use pointers.

    Opt-in: `use_tma=True`, or None with GROKCOPY_ATTENTION_TMA=1 on a compute capability >= 9 GPU.
    It becomes the default only once a GPU measures it faster than the pointer path. A layout that
    the copy engine cannot address (head dim not unit-stride, another stride or the base not a
    multiple of 16 bytes) falls back to pointers.
    """
    if use_tma is None:
        use_tma = (os.environ.get("GROKCOPY_ATTENTION_TMA", "0") == "1" and q.is_cuda
                   and torch.cuda.get_device_capability(q.device)[0] >= 9)
    if not use_tma or is_fake(q):  # traced by torch.compile: pointers (see FWD_KERNELS)
        return None
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # a Triton without host-side descriptors
        return None
    for t in (q, k, v, out):
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * t.element_size() % 16 for st in t.stride()[:-1]):
            return None
    block_d = triton.next_power_of_2(q.shape[-1])
    return tuple(TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, 16, block_d]) for t in (q, k, v, out))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products on the GPU (its default would be tf32, 10-bit mantissas);
    # for fp16/bf16 operands the setting has no effect.
    return "ieee" if dtype == torch.float32 else "tf32"


def flash_attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backward kernels: (dq, dk, dv) from dout [B, Hq, T, D] and the forward's out and lse.

    dq has q's shape, dk/dv k's shape, each in the input's dtype and (where dense) layout; dk and dv
    are summed over the query heads that share a kv head. Optional buffers are written in full.
    """
    name = "flash_attention_backward"
    scale = _check_attention_inputs(name, q, k, v, softmax_scale)
    check_inputs(name, q, out, dout)
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if dout.shape != q.shape or out.shape != q.shape:
        raise ValueError(f"{name}: dout {tuple(dout.shape)} and out {tuple(out.shape)} must match q {tuple(q.shape)}")
    _check_buffer(name, "lse", lse, (B, Hq, T), torch.float32, q.device, contiguous=True)
    dq = _check_buffer(name, "dq", dq if dq is not None else torch.empty_like(q), q.shape, q.dtype,
                       q.device, contiguous=False)
    dk = _check_buffer(name, "dk", dk if dk is not None else torch.empty_like(k), k.shape, k.dtype,
                       k.device, contiguous=False)
    dv = _check_buffer(name, "dv", dv if dv is not None else torch.empty_like(v), v.shape, v.dtype,
                       v.device, contiguous=False)
    BLOCK_D = triton.next_power_of_2(D)
    consts = dict(HEAD_DIM=D, BLOCK_D=BLOCK_D, CAUSAL=bool(causal), DOT_DTYPE=dot_dtype(q.dtype),
                  DOT_PRECISION=_dot_precision(q.dtype))

    delta = torch.empty((B, Hq, T), dtype=torch.float32, device=q.device)
    pre_block = 16 if interpreting() else 64
    launch(flash_attention_bwd_preprocess_kernel, q)[(B * Hq, triton.cdiv(T, pre_block))](
        out, dout, delta, *out.stride(), *dout.stride(), Hq, T,
        HEAD_DIM=D, BLOCK_D=BLOCK_D, BLOCK_M=pre_block,
    )
    bucket = _len_bucket(T, S)
    launch(flash_attention_bwd_dkdv_kernel, q)[lambda meta: (B * Hkv, triton.cdiv(S, meta["BLOCK_N"]))](
        q, k, v, dout, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
        Hkv, Hq // Hkv, T, S, scale, bucket, **consts,
    )
    launch(flash_attention_bwd_dq_kernel, q)[lambda meta: (B * Hq, triton.cdiv(T, meta["BLOCK_M"]))](
        q, k, v, dout, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
        Hq, Hq // Hkv, T, S, scale, bucket, **consts,
    )
    return dq, dk, dv


# --------------------------------------------------------------------------------------------------
# Autograd and the public API.
# --------------------------------------------------------------------------------------------------


# Registered by `kernel_op` (kernels/_common.py), as the norms and SwiGLU are: on a GPU triton_ops,
# which torch.compile traces into, so inductor sees the kernels (and recompiles them with its own
# argument types: softmax_scale goes through fp32_scalar, or an fp64 scale would break tl.dot as
# it did on an H100); under the interpreter opaque custom ops with fake (shape-only) implementations.
_EMPTY_STATS = (0,)  # entropy / target_mass when the statistics are not asked for (ops return tensors)


def _flash_attention_fwd_fake(q, k, v, targets, causal, softmax_scale, with_stats):
    B, Hq, T, D = q.shape
    out = q.new_empty((B, T, Hq, D)).transpose(1, 2)  # token-major, as the kernel writes it
    lse = q.new_empty((B, Hq, T), dtype=torch.float32)
    if not (with_stats or targets is not None):
        return out, lse, lse.new_empty(_EMPTY_STATS), lse.new_empty(_EMPTY_STATS)
    n_targets = targets.shape[2] if targets is not None else 0
    return out, lse, lse.new_empty((B, Hq, T)), lse.new_empty((B, Hq, T, n_targets))


@kernel_op("flash_attention_fwd", _flash_attention_fwd_fake)
def _flash_attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, targets: torch.Tensor | None, causal: bool,
    softmax_scale: float | None, with_stats: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out, lse, entropy, target_mass = flash_attention_forward(
        q, k, v, causal=causal, softmax_scale=softmax_scale, with_stats=with_stats, targets=targets)
    if entropy is None:
        entropy, target_mass = lse.new_empty(_EMPTY_STATS), lse.new_empty(_EMPTY_STATS)  # outputs may not alias
    return out, lse, entropy, target_mass


def _flash_attention_bwd_fake(dout, q, k, v, out, lse, causal, softmax_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@kernel_op("flash_attention_bwd", _flash_attention_bwd_fake)
def _flash_attention_bwd_op(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    causal: bool, softmax_scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return flash_attention_backward(dout, q, k, v, out, lse, causal=causal, softmax_scale=softmax_scale)


def _flash_attention_setup_context(ctx, inputs, output):
    q, k, v, _, causal, softmax_scale, _ = inputs
    out, lse, entropy, target_mass = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.softmax_scale = causal, softmax_scale
    ctx.mark_non_differentiable(lse, entropy, target_mass)


def _flash_attention_grad(ctx, dout, *_stat_grads):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _flash_attention_bwd_op(dout, q, k, v, out, lse, ctx.causal, ctx.softmax_scale)
    return dq, dk, dv, None, None, None, None


_flash_attention_fwd_op.register_autograd(_flash_attention_grad, setup_context=_flash_attention_setup_context)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    softmax_scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * softmax_scale [+ causal mask]) v, differentiable w.r.t. q, k and v.

    q [B, Hq, T, D], k/v [B, Hkv, S, D] with Hq % Hkv == 0 (GQA), D in SUPPORTED_HEAD_DIMS,
    fp16/bf16 (fp32 too), any strides. softmax_scale defaults to 1/sqrt(D). Causal masking with
    T != S is bottom-right aligned: query i sees keys j <= i + S - T. Returns [B, Hq, T, D] in q's
    dtype, stored token-major ([B, T, Hq, D] memory).
    """
    _check_attention_inputs("flash_attention", q, k, v, softmax_scale)
    return _flash_attention_fwd_op(q, k, v, None, causal, softmax_scale, False)[0]


def flash_attention_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    targets: torch.Tensor | None = None,
    causal: bool = True,
    softmax_scale: float | None = None,
) -> tuple[torch.Tensor, AttentionStats]:
    """`flash_attention` plus per-query statistics from the same kernel pass (no T x S matrix).

    targets: optional int [B, T, K] key indices per query (-1, or anything outside [0, S): none),
    shared by all heads; see evals/targets.py for induction / previous-token targets.
    Returns (out, AttentionStats(lse [B,Hq,T], entropy [B,Hq,T], target_mass [B,Hq,T,K])), stats in
    fp32 without gradient (K = 0 when targets is None). `out` is differentiable as in
    `flash_attention`.
    """
    _check_attention_inputs("flash_attention", q, k, v, softmax_scale)
    if targets is not None:
        _check_targets("flash_attention", targets, q)
    out, lse, entropy, target_mass = _flash_attention_fwd_op(q, k, v, targets, causal, softmax_scale, True)
    return out, AttentionStats(lse, entropy, target_mass)
