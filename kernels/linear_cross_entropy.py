"""Fused linear + cross-entropy: mean CE(x @ weight^T, targets) without the full [N, V] logits.

The LM head and its loss are the largest tensors of a step: at paper-162m (32 x 1024 tokens,
vocabulary 32,000) the logits are 1.05e9 values, 2.1 GB in bf16 and 4.2 GB again as the fp32 copy
the plain path (`F.cross_entropy(logits.float())`) makes, followed by an fp32 log-softmax and an
fp32 gradient of the same size. Here the tokens go through in chunks of `chunk_rows`:

    for each chunk of rows:
        logits = x[chunk] @ weight^T                   # [C, V], torch matmul, x's dtype
        cross_entropy_rows_kernel(logits)              # per row: loss, and in place of the logits
                                                       #   d loss / d logits = (softmax - onehot) / n_valid
        dx[chunk]  = dlogits @ weight                  # torch matmul
        dweight   += dlogits^T @ x[chunk]              # accumulated in fp32

so only one [C, V] chunk exists at a time, in x's dtype, and the gradient overwrites it. This is
the scheme of Liger-Kernel's fused linear cross-entropy (the matmuls stay with cuBLAS, a Triton
kernel does the softmax); Apple's Cut Cross-Entropy goes further and never writes a logit tile to
memory (the matmul and the log-sum-exp in one kernel, recomputed in backward), which costs a
fourth vocabulary-sized matmul and a hand-written one at that.

The backward is computed during the forward, while the chunk is at hand: three vocabulary matmuls
in all, as an unfused step has, instead of recomputing the logits in backward (four). The price in
memory is dx [N, D] (x's dtype) and dweight [V, D] (weight's dtype) kept from forward to backward:
at paper-162m 50 MB + 98 MB, against the 4.2+ GB of logits they replace. A forward without
autograd (evaluation, or inputs that need no gradient) skips both gradient matmuls.

Numerics: the logits are rounded to x's dtype (as the LM head's matmul under autocast rounds
them) and everything after is fp32: the row's max and log-sum-exp, its loss, the probabilities.
The gradient of the logits is rounded once to x's dtype, as autocast's backward of the LM head
rounds it; dweight sums the chunks in fp32 and rounds once to weight's dtype.

Ignored targets (== ignore_index) contribute neither loss nor gradient; the mean is over the
others, and with none left it is 0/0 = nan with zero gradients, as `F.cross_entropy` gives. The
count of valid targets stays on the device (the kernel reads it), so nothing here syncs the host.
A target outside [0, V) other than ignore_index is not checked (that would sync); it gets the loss
lse - 0 and no one-hot term, where torch raises.

Registered by `kernel_op` (kernels/_common.py) with `register_autograd`, as the other ops are: on a
GPU a `torch.library.triton_op`, so torch.compile traces into it and its graph holds the chunk
matmuls and the kernel launches themselves; under the interpreter an opaque custom op. The kernel
takes no float scalars (nothing for fp32_scalar): the one that scales the gradient, 1 / n_valid, is
computed inside the kernel in fp32 from the count it loads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from grokcopy.kernels._common import cast_rne, check_inputs, kernel_op, launch
from grokcopy.kernels.reference import linear_cross_entropy_reference  # noqa: F401 (re-exported)

# Widest block of a logits row a program holds at once; wider rows (V = 32,000 is 8 blocks) are
# walked block by block, twice: once for the max and the sum of exponentials, once for the gradient.
MAX_BLOCK_V = 4096
NUM_WARPS = 8
# Logits per chunk (rows x V) when chunk_rows is not given: 2**27 values, 256 MB in bf16, is 4,096
# rows at V = 32,000 and 8 chunks at paper-162m. Larger chunks mean fewer passes over the fp32
# dweight accumulator (each chunk adds a [V, D] product to it: 8 x 3 x 98 MB here) and fuller
# matmuls; smaller ones mean less memory. Chosen by this arithmetic, not measured on a GPU.
CHUNK_LOGITS = 2**27


@triton.jit
def cross_entropy_rows_kernel(
    logits_ptr,
    stride_row,
    targets_ptr,
    loss_ptr,
    n_valid_ptr,
    n_cols,
    ignore_index,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One row of logits: its loss lse - logit[target] into loss_ptr[row] (0 when ignored) and,
    with WRITE_GRAD, (softmax - onehot(target)) / n_valid written over the row (0 when ignored).

    Two passes over the row: the first keeps a running max m and sum s of exp(logit - m) (the
    online log-sum-exp: when the max grows, the sum so far is rescaled by exp(m_old - m_new)); the
    second needs the final lse, so it reads the row again and overwrites it block by block.
    """
    row = tl.program_id(0).to(tl.int64)  # row * stride passes 2**31 at 65,536 rows x V = 32,000
    row_ptr = logits_ptr + row * stride_row
    target = tl.load(targets_ptr + row)
    valid = target != ignore_index
    cols = tl.arange(0, BLOCK_V)

    m = tl.full([], float("-inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    for start in range(0, n_cols, BLOCK_V):
        mask = start + cols < n_cols
        x = tl.load(row_ptr + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    in_range = valid & (target >= 0) & (target < n_cols)
    target_logit = tl.load(row_ptr + tl.where(in_range, target, 0), mask=in_range, other=0.0).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - target_logit, 0.0))

    if WRITE_GRAD:
        # The mean's 1 / n_valid, formed here in fp32 from the count on the device. With n_valid = 0
        # every row is ignored and writes zeros; the max only keeps 1 / 0 from being computed.
        scale = 1.0 / tl.maximum(tl.load(n_valid_ptr).to(tl.float32), 1.0)
        for start in range(0, n_cols, BLOCK_V):
            mask = start + cols < n_cols
            x = tl.load(row_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse) - tl.where(start + cols == target, 1.0, 0.0)
            grad = tl.where(valid, grad * scale, 0.0)
            tl.store(row_ptr + start + cols, cast_rne(grad, logits_ptr.dtype.element_ty), mask=mask)


def default_chunk_rows(n_rows: int, vocab: int) -> int:
    """Rows per chunk: a power of two with about CHUNK_LOGITS logits, at most n_rows rounded up."""
    rows = max(1, CHUNK_LOGITS // vocab)
    return min(triton.next_power_of_2(n_rows), 1 << (rows.bit_length() - 1))


def linear_cross_entropy_forward(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk_rows: int,
    compute_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss fp32 [], dx [N, D] or [0], dweight [V, D] or [0]) for x [N, D], weight [V, D] of
    one dtype and targets [N] int64; the gradients are of the mean loss, empty without compute_grads."""
    n_rows, vocab = x.shape[0], weight.shape[0]
    targets = targets.contiguous()  # the kernel reads targets[row] at unit stride
    valid = targets != ignore_index
    n_valid = valid.sum()  # stays on the device: the kernel reads it, the mean divides by it
    row_loss = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    dx = torch.empty_like(x) if compute_grads else x.new_empty(0)
    # fp32 accumulator over the chunks; rounded once to weight's dtype at the end
    dweight = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if compute_grads else None
    block_v = min(triton.next_power_of_2(vocab), MAX_BLOCK_V)
    # The matmuls run in the inputs' dtype: the caller has cast x and weight to the compute dtype
    # (the autocast dtype, like the LM head's matmul), so autocast must not cast again in here.
    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, n_rows, chunk_rows):
            rows = slice(start, min(start + chunk_rows, n_rows))
            x_chunk = x[rows]
            logits = x_chunk @ weight.T  # [C, V], contiguous
            launch(cross_entropy_rows_kernel, logits)[(logits.shape[0],)](
                logits, logits.stride(0), targets[rows], row_loss[rows], n_valid, vocab, ignore_index,
                WRITE_GRAD=compute_grads, BLOCK_V=block_v, num_warps=NUM_WARPS,
            )
            if compute_grads:  # logits now holds d loss / d logits for these rows
                torch.matmul(logits, weight, out=dx[rows])
                # fp32 += bf16 product: a [V, D] temporary per chunk (torch has no bf16 x bf16 -> fp32
                # addmm on CPU; cuBLAS could accumulate in place, untried without a GPU)
                dweight += logits.T @ x_chunk
    loss = row_loss.sum() / n_valid  # 0 / 0 = nan when every target is ignored, as torch gives
    return loss, dx, dweight.to(weight.dtype) if compute_grads else weight.new_empty(0)


# ----------------------------------------------------------------------------------------------
# torch.library registration (kernels/_common.py `kernel_op`: triton_op on a GPU, custom_op under the
# interpreter; the schema from the annotations). The op returns the loss and its gradients; autograd
# scales them.


def _linear_cross_entropy_fake(x, weight, targets, ignore_index, chunk_rows, compute_grads):
    loss = x.new_empty((), dtype=torch.float32)
    if not compute_grads:
        return loss, x.new_empty(0), weight.new_empty(0)
    return loss, torch.empty_like(x), torch.empty_like(weight)


@kernel_op("linear_cross_entropy", _linear_cross_entropy_fake)
def _linear_cross_entropy_op(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk_rows: int,
    compute_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return linear_cross_entropy_forward(x, weight, targets, ignore_index, chunk_rows, compute_grads)


def _setup_context(ctx, inputs, output):
    _, dx, dweight = output
    ctx.save_for_backward(dx, dweight)
    ctx.compute_grads = inputs[-1]


def _grad(ctx, dloss, _ddx, _ddweight):
    if not ctx.compute_grads:
        raise RuntimeError("linear_cross_entropy: backward through a call made without gradients "
                           "(the inputs needed none, or grad mode was off)")
    dx, dweight = ctx.saved_tensors
    # dloss is 1 after loss.backward(), 1 / grad_accum when the caller scales; a multiply either
    # way, rather than a host sync to test for 1
    return dx * dloss.to(dx.dtype), dweight * dloss.to(dweight.dtype), None, None, None, None


_linear_cross_entropy_op.register_autograd(_grad, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public API


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits x @ weight^T against targets, without forming all of them.

    Args:
        x: [N, D] hidden states, fp32, bf16 or fp16.
        weight: [V, D] the LM head (an fp32 parameter is fine); under autocast both are cast to the
            autocast dtype first, as the LM head's matmul would cast them.
        targets: [N] int64 class indices; ignore_index marks rows left out of the mean.
        chunk_rows: rows per chunk (default: about CHUNK_LOGITS logits per chunk).

    Returns:
        The mean loss over the non-ignored rows, an fp32 scalar (nan when every row is ignored).
        Differentiable w.r.t. x and weight (gradients in their dtypes, computed during the forward).
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: x [N, D] and weight [V, D] needed, got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    if targets.shape != (x.shape[0],) or targets.dtype != torch.int64:
        raise ValueError(f"linear_cross_entropy: targets must be int64 [{x.shape[0]}], got {targets.dtype} "
                         f"{tuple(targets.shape)}")
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
    elif weight.dtype != x.dtype:
        weight = weight.to(x.dtype)  # the matmul needs one dtype; x's is the compute dtype
    check_inputs("linear_cross_entropy", x, weight)
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(x.shape[0], weight.shape[0])
    compute_grads = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return _linear_cross_entropy_op(x, weight, targets, ignore_index, chunk_rows, compute_grads)[0]
