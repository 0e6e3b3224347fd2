"""SwiGLU, silu(gate) * up: Triton forward/backward kernels, launchers, torch ops.

Two entry points share one pair of kernels: `swiglu(gate, up)` takes the two projections as
separate tensors, `swiglu_packed(gate_up)` takes them side by side in one [..., 2I] tensor (the
output of a single fused gate/up matmul). The kernels address gate, up and their gradients
through independent base pointers and row strides, so the packed halves are plain strided views:
no copy in, and the backward writes both halves of one [..., 2I] gradient directly.

Arithmetic is fp32 throughout, with one rounding at the store. The backward recomputes
sigmoid(gate) from the saved inputs instead of keeping silu(gate) from the forward: that would
cost an extra [..., I] tensor of activation memory and a write plus a read, to save a few flops
in a kernel that is bound by memory traffic anyway.

The ops are registered by `kernel_op` (kernels/_common.py) with `register_autograd`: on a GPU
`torch.compile` sees the kernels themselves (triton_op), under the interpreter opaque custom ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from grokcopy.kernels._common import as_rows, cast_rne, check_inputs, kernel_op, launch
from grokcopy.kernels.reference import swiglu_reference  # noqa: F401 (re-exported)

# Elements per program and warps per program for these elementwise kernels: 16 values per thread,
# so each thread moves 32 contiguous bytes of bf16 per tensor. Chosen, not tuned on a GPU.
TILE_ELEMENTS = 4096
NUM_WARPS = 8
# Widest column block; wider rows are split across the grid's second axis.
MAX_BLOCK_N = 1024


@triton.jit
def _tile_indices(n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row and column indices of this program's tile. The grid is 1-D with the column blocks
    fastest: programs launched together cover whole [BLOCK_M, n_cols] row bands, so the resident
    programs read (and write) each tensor in runs of n_cols contiguous elements. With rows fastest
    (the first launch order) they swept one BLOCK_N-column stripe down the rows instead: every
    tensor was read at a row stride of n_cols (22 KB for I = 11008 in bf16), in 2 KB pieces. 1-D
    also because a grid's second axis stops at 65535 blocks."""
    n_col_blocks = tl.cdiv(n_cols, BLOCK_N)
    pid = tl.program_id(0)
    rows = (pid // n_col_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % n_col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, cols


@triton.jit
def swiglu_fwd_kernel(
    gate_ptr,
    up_ptr,
    out_ptr,
    n_rows,
    n_cols,
    stride_gate,
    stride_up,
    stride_out,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out = silu(gate) * up on one [BLOCK_M, BLOCK_N] tile of the [n_rows, n_cols] problem."""
    rows, cols = _tile_indices(n_cols, BLOCK_M, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    rows = rows.to(tl.int64)[:, None]  # rows * stride can pass 2**31 (65536 tokens x 2 x 16384)
    cols = cols[None, :]

    # fp32 for the exp inside sigmoid and for the products (the interpreter has no bf16 math).
    gate = tl.load(gate_ptr + rows * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + rows * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + rows * stride_out + cols, cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(
    dout_ptr,
    gate_ptr,
    up_ptr,
    dgate_ptr,
    dup_ptr,
    n_rows,
    n_cols,
    stride_dout,
    stride_gate,
    stride_up,
    stride_dgate,
    stride_dup,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dgate, dup for one tile, recomputing sigmoid(gate).

    With s = sigmoid(g): d silu(g) / dg = s + g * s * (1 - s) = s * (1 + g * (1 - s)), so
        dup = dout * g * s,    dgate = dout * up * s * (1 + g * (1 - s)).
    """
    rows, cols = _tile_indices(n_cols, BLOCK_M, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    rows = rows.to(tl.int64)[:, None]
    cols = cols[None, :]

    dout = tl.load(dout_ptr + rows * stride_dout + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + rows * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + rows * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    dup = dout * gate * sig
    dgate = dout * up * sig * (1.0 + gate * (1.0 - sig))
    tl.store(dgate_ptr + rows * stride_dgate + cols, cast_rne(dgate, dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dup_ptr + rows * stride_dup + cols, cast_rne(dup, dup_ptr.dtype.element_ty), mask=mask)


def _grid_and_blocks(n_rows: int, n_cols: int) -> tuple[tuple[int], int, int]:
    block_n = min(triton.next_power_of_2(n_cols), MAX_BLOCK_N)
    block_m = max(1, TILE_ELEMENTS // block_n)
    return (triton.cdiv(n_rows, block_m) * triton.cdiv(n_cols, block_n),), block_m, block_n


def swiglu_forward(gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor) -> None:
    """Write silu(gate) * up into `out`. All three: [rows, I] with unit column stride, any row stride."""
    n_rows, n_cols = gate.shape
    if gate.numel() == 0:
        return
    grid, block_m, block_n = _grid_and_blocks(n_rows, n_cols)
    launch(swiglu_fwd_kernel, gate)[grid](
        gate,
        up,
        out,
        n_rows,
        n_cols,
        gate.stride(0),
        up.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=NUM_WARPS,
    )


def swiglu_backward(
    dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, dgate: torch.Tensor, dup: torch.Tensor
) -> None:
    """Write the gradients of silu(gate) * up into `dgate` and `dup`. All [rows, I], unit column stride."""
    n_rows, n_cols = gate.shape
    if gate.numel() == 0:
        return
    grid, block_m, block_n = _grid_and_blocks(n_rows, n_cols)
    launch(swiglu_bwd_kernel, gate)[grid](
        dout,
        gate,
        up,
        dgate,
        dup,
        n_rows,
        n_cols,
        dout.stride(0),
        gate.stride(0),
        up.stride(0),
        dgate.stride(0),
        dup.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=NUM_WARPS,
    )


def _split(gate_up_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, 2I] -> its gate and up halves, [rows, I] views sharing the row stride."""
    half = gate_up_rows.shape[-1] // 2
    return gate_up_rows[:, :half], gate_up_rows[:, half:]


def _empty(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------------------
# torch.library registration (kernels/_common.py `kernel_op`: triton_op on a GPU, custom_op under
# the interpreter; schemas from the annotations; fake implementations describe outputs only).


def _swiglu_fake(gate, up):
    return _empty(gate.shape, gate)


@kernel_op("swiglu", _swiglu_fake)
def _swiglu_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    out = _empty(gate.shape, gate)
    swiglu_forward(as_rows(gate), as_rows(up), out.view(-1, gate.shape[-1]))
    return out


def _swiglu_backward_fake(dout, gate, up):
    return _empty(gate.shape, gate), _empty(gate.shape, gate)


@kernel_op("swiglu_backward", _swiglu_backward_fake)
def _swiglu_backward_op(dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dgate, dup = _empty(gate.shape, gate), _empty(gate.shape, gate)
    n_cols = gate.shape[-1]
    swiglu_backward(as_rows(dout), as_rows(gate), as_rows(up), dgate.view(-1, n_cols), dup.view(-1, n_cols))
    return dgate, dup


def _swiglu_packed_fake(gate_up):
    return _empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2), gate_up)


@kernel_op("swiglu_packed", _swiglu_packed_fake)
def _swiglu_packed_op(gate_up: torch.Tensor) -> torch.Tensor:
    out = _empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2), gate_up)
    swiglu_forward(*_split(as_rows(gate_up)), out.view(-1, out.shape[-1]))
    return out


def _swiglu_packed_backward_fake(dout, gate_up):
    return _empty(gate_up.shape, gate_up)


@kernel_op("swiglu_packed_backward", _swiglu_packed_backward_fake)
def _swiglu_packed_backward_op(dout: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    d_gate_up = _empty(gate_up.shape, gate_up)
    # Both halves of the one gradient are written by the same kernel launch, through views.
    swiglu_backward(as_rows(dout), *_split(as_rows(gate_up)), *_split(d_gate_up.view(-1, gate_up.shape[-1])))
    return d_gate_up


def _swiglu_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_grad(ctx, dout):
    gate, up = ctx.saved_tensors
    return _swiglu_backward_op(dout, gate, up)


def _swiglu_packed_grad(ctx, dout):
    (gate_up,) = ctx.saved_tensors
    return _swiglu_packed_backward_op(dout, gate_up)


_swiglu_op.register_autograd(_swiglu_grad, setup_context=_swiglu_setup_context)
_swiglu_packed_op.register_autograd(_swiglu_packed_grad, setup_context=_swiglu_setup_context)


# ----------------------------------------------------------------------------------------------
# Public API


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, computed in fp32 and rounded once to the inputs' dtype.

    Args:
        gate, up: [..., I], same shape, dtype (fp32, bf16 or fp16) and device; any strides.

    Returns:
        out: [..., I], contiguous, the inputs' dtype. Differentiable w.r.t. gate and up.
    """
    check_inputs("swiglu(gate, up)", gate, up)
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate has shape {tuple(gate.shape)} but up has {tuple(up.shape)}")
    if gate.dim() == 0 or gate.shape[-1] == 0:
        raise ValueError(f"swiglu: gate and up need a non-empty last dimension, got shape {tuple(gate.shape)}")
    return _swiglu_op(gate, up)


def swiglu_packed(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate_up[..., :I]) * gate_up[..., I:] with I = gate_up.shape[-1] // 2.

    Args:
        gate_up: [..., 2I], fp32, bf16 or fp16, any strides; the last dimension must be even.

    Returns:
        out: [..., I], contiguous, gate_up's dtype. Differentiable; the gradient is one [..., 2I]
        tensor written by a single kernel.
    """
    check_inputs("swiglu_packed(gate_up)", gate_up)
    if gate_up.dim() == 0 or gate_up.shape[-1] == 0 or gate_up.shape[-1] % 2:
        raise ValueError(
            f"swiglu_packed: gate_up's last dimension must be even and non-zero (gate and up side by side), "
            f"got shape {tuple(gate_up.shape)}"
        )
    return _swiglu_packed_op(gate_up)


