"""Rotary position embedding (RoPE) of queries and keys: one Triton kernel, forward and backward.

    out[..., :D/2] = x1 * cos - x2 * sin        x1 = x[..., :D/2], x2 = x[..., D/2:]
    out[..., D/2:] = x2 * cos + x1 * sin        (HF's rotate_half convention, model/llama.py)

The eager form (`rotary_reference`: chunk, negate, cat, two casts, two products, a sum) is about
ten kernels per tensor and as many round trips through memory, for q and for k, in forward and
again in backward. Here one launch reads q and k once and writes them rotated once: the grid's
second axis runs over the Hq query heads and then the Hkv key heads (GQA: Hkv may be smaller), and
each program rotates a tile of tokens of one head, with cos and sin read from the [T, D] tables.

The backward is the same kernel: a rotation's transpose is the rotation by -angle, so the gradient
of the rotated q and k is rotated back with sin negated (INVERSE), and nothing needs saving but
the tables.

Why a separate kernel and not RoPE applied inside the attention kernels as Q and K tiles load:
- it serves every attention backend: on CUDA `auto` attention is SDPA (cuDNN is faster than our
  attention today), whose kernels we cannot change, and flash_attn and the torch reference too;
- fused into our attention, the rotation would have to be applied in the forward kernel and again
  in both backward kernels (dq, and dk/dv recompute the rotated tiles), for each tile every time
  it is loaded (K tiles are loaded by every query block), and the rotated dq/dk written back
  through the inverse rotation: three kernels to change instead of one to add;
- the separate pass costs one read and one write of q and k (at paper-162m 2 x 201 MB per layer in
  bf16, forward and backward alike), about 0.13 ms per layer at 3 TB/s, against the eager chain's
  dozens of passes;
- kernels/flash_attention.py belongs to another change in progress.
Fusing into attention stays possible later: the kernel here is then its reference.

Numerics: fp32 arithmetic with fp32 tables, one rounding to the output dtype (the reference, like
HF, rounds cos and sin to x's dtype and rounds each product and the sum: in bf16 the two differ by
about one bf16 ulp). Outputs are contiguous [B, T, H, D]; the inputs may be any strided views with
a unit stride along D (q and k are slices of the packed qkv projection).

Registered by `kernel_op` (kernels/_common.py) with `register_autograd`, as the other ops are: on a
GPU a `torch.library.triton_op`, so torch.compile traces into it and its graph holds the kernel
launch, forward and backward; under the interpreter an opaque custom op. The kernel takes no float
scalars (nothing for fp32_scalar).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from grokcopy.kernels._common import cast_rne, check_inputs, kernel_op, launch
from grokcopy.kernels.reference import rotary_reference  # noqa: F401 (re-exported)

# Elements of one half-head (D / 2 columns) per program: 2,048, so a program moves 4,096 values of q
# or k in and out (8 KiB each way in bf16). Chosen, not tuned on a GPU.
TILE_ELEMENTS = 2048
NUM_WARPS = 4


@triton.jit
def rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, cos_ptr, sin_ptr,
    n_rows, seq_len, n_q_heads, n_k_heads,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_cos, stride_sin,
    HALF: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    INVERSE: tl.constexpr,
):
    """Rotate BLOCK_T tokens (rows b * seq_len + t of [B * T]) of one head: a query head for
    program_id(1) < n_q_heads, else key head program_id(1) - n_q_heads. Outputs are contiguous."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    head = tl.program_id(1)
    cols = tl.arange(0, BLOCK_HALF)
    mask = (rows < n_rows)[:, None] & (cols < HALF)[None, :]
    rows = rows.to(tl.int64)  # row offsets pass 2**31 at 65,536 tokens x 40 heads x 128
    b, t = rows // seq_len, rows % seq_len
    # One program reads either q or k: both addresses are formed and the other one's load is
    # masked off entirely (a branch on the head would have to join two pointer types' strides).
    is_q = head < n_q_heads
    # tl.where rather than `mask & is_q`: the interpreter's load rejects the broadcast mask that gives
    q_mask, k_mask = tl.where(is_q, mask, False), tl.where(is_q, False, mask)
    q_in = q_ptr + (b * stride_qb + t * stride_qt + head * stride_qh)[:, None] + cols[None, :]
    k_in = k_ptr + (b * stride_kb + t * stride_kt + (head - n_q_heads) * stride_kh)[:, None] + cols[None, :]
    q_out = q_out_ptr + ((rows * n_q_heads + head) * (2 * HALF))[:, None] + cols[None, :]
    k_out = k_out_ptr + ((rows * n_k_heads + head - n_q_heads) * (2 * HALF))[:, None] + cols[None, :]

    x1 = tl.where(is_q, tl.load(q_in, mask=q_mask, other=0.0), tl.load(k_in, mask=k_mask, other=0.0))
    x2 = tl.where(is_q, tl.load(q_in + HALF, mask=q_mask, other=0.0), tl.load(k_in + HALF, mask=k_mask, other=0.0))
    x1, x2 = x1.to(tl.float32), x2.to(tl.float32)
    # the tables repeat their halves (HF's layout), so the first half holds every angle
    cos = tl.load(cos_ptr + (t * stride_cos)[:, None] + cols[None, :], mask=mask, other=0.0)
    sin = tl.load(sin_ptr + (t * stride_sin)[:, None] + cols[None, :], mask=mask, other=0.0)
    if INVERSE:
        sin = -sin
    out1 = x1 * cos - x2 * sin
    out2 = x2 * cos + x1 * sin
    dtype = q_out_ptr.dtype.element_ty
    tl.store(q_out, cast_rne(out1, dtype), mask=q_mask)
    tl.store(q_out + HALF, cast_rne(out2, dtype), mask=q_mask)
    tl.store(k_out, cast_rne(out1, dtype), mask=k_mask)
    tl.store(k_out + HALF, cast_rne(out2, dtype), mask=k_mask)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def rotary_forward(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k) rotated (by -angle with `inverse`) into new contiguous tensors. q [B, T, Hq, D],
    k [B, T, Hkv, D] of one dtype; cos, sin [>= T, D] fp32."""
    q, k = _unit_last_stride(q), _unit_last_stride(k)
    cos, sin = _unit_last_stride(cos.float()), _unit_last_stride(sin.float())
    B, T, n_q_heads, D = q.shape
    n_k_heads = k.shape[2]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.numel() == 0:
        return q_out, k_out
    half = D // 2
    block_half = triton.next_power_of_2(half)
    block_t = max(1, TILE_ELEMENTS // block_half)
    grid = (triton.cdiv(B * T, block_t), n_q_heads + n_k_heads)
    launch(rotary_kernel, q)[grid](
        q, k, q_out, k_out, cos, sin,
        B * T, T, n_q_heads, n_k_heads,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        cos.stride(0), sin.stride(0),
        HALF=half, BLOCK_T=block_t, BLOCK_HALF=block_half, INVERSE=inverse, num_warps=NUM_WARPS,
    )
    return q_out, k_out


# ----------------------------------------------------------------------------------------------
# torch.library registration (kernels/_common.py `kernel_op`: triton_op on a GPU, custom_op under the
# interpreter; the schema from the annotations)


def _rotary_fake(q, k, cos, sin, inverse):
    return q.new_empty(q.shape), k.new_empty(k.shape)


@kernel_op("rotary", _rotary_fake)
def _rotary_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return rotary_forward(q, k, cos, sin, inverse)


def _setup_context(ctx, inputs, output):
    _, _, cos, sin, inverse = inputs
    ctx.save_for_backward(cos, sin)
    ctx.inverse = inverse


def _grad(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    dq, dk = _rotary_op(dq, dk, cos, sin, not ctx.inverse)  # the transpose of a rotation: its inverse
    return dq, dk, None, None, None


_rotary_op.register_autograd(_grad, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public API


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of queries and keys in one launch: `rotary_reference` of each, rounded once.

    Args:
        q: [B, T, Hq, D] and k: [B, T, Hkv, D], one dtype (fp32, bf16 or fp16), D even, any strides
            with unit stride along D (others are copied first).
        cos, sin: [T, D] fp32, the halves repeated (model.llama.rope_tables); rows past T unused.

    Returns:
        (q_rotated, k_rotated): contiguous, the inputs' shapes and dtype. Differentiable w.r.t. q and k.
    """
    check_inputs("rotary(q, k)", q, k)
    check_inputs("rotary(q, cos, sin)", q, cos, sin, same_dtype=False)
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise TypeError(f"rotary: cos and sin must be fp32 tables, got {cos.dtype} and {sin.dtype}")
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3] or q.shape[3] % 2:
        raise ValueError(f"rotary: q [B, T, Hq, D] and k [B, T, Hkv, D] with D even needed, got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[0] < q.shape[1] or cos.shape[1] != q.shape[3]:
        raise ValueError(f"rotary: cos and sin [>= {q.shape[1]}, {q.shape[3]}] needed, got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}")
    return _rotary_op(q, k, cos, sin, False)
