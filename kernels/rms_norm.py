"""RMSNorm and fused residual-add + RMSNorm: Triton forward/backward kernels, launchers, torch ops.

Convention (Llama / Hugging Face `LlamaRMSNorm`): the statistics and the normalisation are
computed in fp32, the normalised row is rounded to the input dtype, and only then multiplied by
the weight, the product rounded once to the output dtype:

    normed = (x_fp32 * rsqrt(mean(x_fp32 ** 2) + eps)).to(x.dtype)
    y      = (weight_fp32 * normed_fp32).to(out_dtype)           # out_dtype: x.dtype by default

In bf16/fp16 the product of two such values is exact in fp32, so computing it in fp32 and
rounding once is bit-for-bit what torch does for `weight * normed`. `rms_norm_reference` below
is that formula; in float64 it is the exact function the tests compare against.

Mixed precision (the model's policy, model/llama.py): the residual stream is fp32 and each branch
(attention, MLP) returns bf16 under autocast. So x, residual and weight may differ in dtype: the
sum x + residual is formed in fp32 and stored in the residual's dtype (torch's type promotion of
`x + residual` when the residual is the wider one), and `out_dtype` lets the norm write the bf16
that the next matmul reads, instead of an fp32 row that autocast would convert in another pass.

Both ops are registered with `torch.library.custom_op` (opaque to `torch.compile`, so it traces
them without graph breaks) with fake implementations and `register_autograd`. `triton_op` would let
inductor see inside the kernels, but its fake-tensor tracing calls the kernel, which fails under
the CPU interpreter; these kernels are fused already, so there is nothing for inductor to add.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from grokcopy.kernels._common import (
    SUPPORTED_FLOAT_DTYPES,
    as_rows,
    autotuned,
    cast_rne,
    check_inputs,
    fp32_scalar,
    interpreting,
)
from grokcopy.kernels.reference import fused_add_rms_norm_reference, rms_norm_reference  # noqa: F401 (re-exported)

# A row lives in registers as one block of next_power_of_2(D) fp32 values. Up to this width that
# works (the widest rows spill part of it to local memory: slower, still correct); wider rows would
# need a chunked two-pass kernel, so they are refused with a clear error instead.
MAX_ROW = 65536
# Launch configurations, autotuned on a GPU per row width (BLOCK_D), row-count bucket and dtypes.
# TILE: elements per loop step of a program. Small rows are packed TILE // BLOCK_D to a tile so
# that each step still moves a useful amount of memory (one 768-wide bf16 row is only 1.5 KiB);
# a row wider than TILE is one tile. PROGRAMS_PER_SM (backward): programs per SM, each owning a
# contiguous range of rows and writing one partial dweight row (see rms_norm_bwd_kernel).
# The first config of each list is the one measured on an H100 on 2026-11-25 (bench/results/
# h100-80gb-hbm3-2026-11-25: backward at 15% of copy bandwidth); the others trade warps per
# program for more programs in flight, which a latency-bound row loop needs. GROKCOPY_AUTOTUNE=0
# keeps only the first. The interpreter runs programs one after another: one config, and a
# handful of backward programs are enough to exercise the partial-sum reduction across programs.
TILE_ELEMENTS = 4096
INTERPRETER_BWD_PROGRAMS = 4
_FWD_SHAPES = [(4096, 16), (4096, 8), (4096, 4), (2048, 8), (2048, 4), (8192, 16), (1024, 4)]  # (TILE, warps)
_BWD_SHAPES = [(4096, 16, 2), (4096, 16, 4), (4096, 8, 4), (4096, 4, 8), (2048, 8, 8), (2048, 4, 8), (8192, 16, 2)]
MAX_BWD_PROGRAMS_PER_SM = max(pps for _, _, pps in _BWD_SHAPES)


def _fwd_configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"TILE": TILE_ELEMENTS}, num_warps=1)]
    return autotuned([triton.Config({"TILE": tile}, num_warps=w) for tile, w in _FWD_SHAPES])


def _bwd_configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"TILE": TILE_ELEMENTS, "PROGRAMS_PER_SM": INTERPRETER_BWD_PROGRAMS}, num_warps=1)]
    return autotuned([triton.Config({"TILE": tile, "PROGRAMS_PER_SM": pps}, num_warps=w)
                       for tile, w, pps in _BWD_SHAPES])


def _prune_by_thread_load(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep configs that give each thread 4 to 32 elements of a tile: fewer wastes lanes on masked
    or idle work, more holds too many fp32 values of x, dy (and the residual) per thread and spills
    (static sm_90a table: D = 11008 at 16 warps, 32 elements each, spills 376 B in the backward)."""
    block_d = kwargs["BLOCK_D"]

    def per_thread(c: triton.Config) -> int:
        return max(c.kwargs["TILE"], block_d) // (c.num_warps * 32)

    return [c for c in configs if 4 <= per_thread(c) <= 32] or configs[:1]


def rows_per_tile(block_d: int, tile: int) -> int:
    """BLOCK_M: rows packed into one tile of `tile` elements (at least one row)."""
    return max(1, tile // block_d)


@triton.autotune(configs=_fwd_configs(), key=["BLOCK_D", "ROWS_BUCKET", "HAS_RESIDUAL"],
                 prune_configs_by={"early_config_prune": _prune_by_thread_load})
@triton.jit
def rms_norm_fwd_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    y_ptr,
    res_out_ptr,
    n_rows,
    n_cols,
    stride_x,
    stride_res,
    stride_y,
    stride_res_out,
    eps,
    ROWS_BUCKET,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE: tl.constexpr,
):
    """y = weight * round(x * rstd) for BLOCK_M whole rows, each read once and written once.

    With HAS_RESIDUAL, x + residual is formed in fp32, rounded to the new residual's dtype and
    stored; that rounded sum is what gets normalised, so y == rms_norm(new_residual). Each pointer
    keeps its own dtype (x bf16 and residual fp32, say); y is written in y_ptr's dtype.
    """
    BLOCK_M: tl.constexpr = (TILE + BLOCK_D - 1) // BLOCK_D  # rows_per_tile: both are powers of two
    eps = fp32_scalar(eps)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    # int64 row offsets: rows * stride passes 2**31 elements at 65536 tokens x 32768 columns.
    rows = rows.to(tl.int64)[:, None]
    cols = cols[None, :]

    # The whole [BLOCK_M, BLOCK_D] tile is held in fp32 registers: the sum of squares needs every
    # element of a row before any output can be written, and loading once means one HBM read.
    # fp32 because a bf16 sum of squares over thousands of elements loses the low bits (and the
    # interpreter has no bf16 arithmetic at all).
    x = tl.load(x_ptr + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + rows * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        summed = cast_rne(x + res, res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + rows * stride_res_out + cols, summed, mask=mask)
        x = summed.to(tl.float32)

    # Masked columns were loaded as 0, so they add nothing to the sum; divide by the true width.
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    # Round the normalised row to the dtype of the normalised input before the weight multiply
    # (HF's order); for an fp32 residual stream that rounding is a no-op.
    if HAS_RESIDUAL:
        normed = cast_rne(x * rstd[:, None], res_out_ptr.dtype.element_ty).to(tl.float32)
    else:
        normed = cast_rne(x * rstd[:, None], x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=col_mask[None, :], other=0.0).to(tl.float32)
    tl.store(y_ptr + rows * stride_y + cols, cast_rne(normed * w, y_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_bwd_configs(), key=["BLOCK_D", "ROWS_BUCKET", "HAS_RESIDUAL_GRAD"],
                 prune_configs_by={"early_config_prune": _prune_by_thread_load})
@triton.jit
def rms_norm_bwd_kernel(
    dy_ptr,
    x_ptr,
    w_ptr,
    dres_ptr,
    dx_ptr,
    dw_partial_ptr,
    n_rows,
    n_cols,
    stride_dy,
    stride_x,
    stride_dres,
    stride_dx,
    eps,
    ROWS_BUCKET,
    HAS_RESIDUAL_GRAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE: tl.constexpr,
    PROGRAMS_PER_SM: tl.constexpr,
):
    """dx for this program's contiguous range of rows, and its partial dweight row.

    With n = x * rstd and g = dy * weight, the gradient of the normalisation is
        dx = rstd * (g - n * mean(g * n))
    and dweight = sum over rows of dy * round(n). rstd is recomputed from x, which is loaded here
    anyway, instead of being saved by the forward: it costs no extra memory traffic.

    dweight is a reduction over every row. Rather than atomics (contended, and their order makes
    the result non-deterministic) each program owns a contiguous range of rows, accumulates its
    sum in fp32 registers and writes one partial row (zeros when its range is empty); the launcher
    adds the partial rows. The ranges split the BLOCK_M-row blocks evenly over the grid, so no block
    straddles two programs and the last programs may get fewer rows.

    With HAS_RESIDUAL_GRAD (the fused-add op) x is the new residual s = x_in + residual_in, and the
    gradient reaching s from its own use downstream is added: ds = dx_norm + dres.
    """
    BLOCK_M: tl.constexpr = (TILE + BLOCK_D - 1) // BLOCK_D  # rows_per_tile: both are powers of two
    eps = fp32_scalar(eps)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    rows_per_program = tl.cdiv(tl.cdiv(n_rows, BLOCK_M), tl.num_programs(0)) * BLOCK_M
    first_row = pid * rows_per_program
    for start in range(first_row, tl.minimum(first_row + rows_per_program, n_rows), BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        rows = rows.to(tl.int64)[:, None]
        # Rows past the end load as zeros: rstd stays finite (rsqrt(eps)) and they add nothing.
        x = tl.load(x_ptr + rows * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)

        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
        normed = x * rstd[:, None]
        # The forward multiplied weight by the rounded normalised value; its derivative is that.
        dw_acc += tl.sum(dy * cast_rne(normed, x_ptr.dtype.element_ty).to(tl.float32), axis=0)

        g = dy * w[None, :]
        mean_gn = tl.sum(g * normed, axis=1) / n_cols
        dx = (g - normed * mean_gn[:, None]) * rstd[:, None]
        if HAS_RESIDUAL_GRAD:
            dx += tl.load(dres_ptr + rows * stride_dres + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows * stride_dx + cols[None, :], cast_rne(dx, dx_ptr.dtype.element_ty), mask=mask)

    tl.store(dw_partial_ptr + pid * n_cols + cols, dw_acc, mask=col_mask)


def _check(name: str, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None,
           out_dtype: torch.dtype | None = None) -> None:
    """Argument checks shared by both ops; messages name the op and the argument. Dtypes may
    differ (see the module docstring), devices may not."""
    if residual is None:
        check_inputs(f"{name}(x, weight)", x, weight, same_dtype=False)
    else:
        check_inputs(f"{name}(x, residual, weight)", x, residual, weight, same_dtype=False)
        if residual.shape != x.shape:
            raise ValueError(f"{name}: residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}")
    if out_dtype is not None and out_dtype not in SUPPORTED_FLOAT_DTYPES:
        raise TypeError(f"{name}: out_dtype {out_dtype}; supported: {list(SUPPORTED_FLOAT_DTYPES)}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name}: x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    if weight.shape != (x.shape[-1],):
        raise ValueError(
            f"{name}: weight has shape {tuple(weight.shape)} but x's last dimension is {x.shape[-1]}; "
            f"expected ({x.shape[-1]},)"
        )
    if x.shape[-1] > MAX_ROW:
        raise ValueError(f"{name}: last dimension {x.shape[-1]} exceeds {MAX_ROW}, the widest row kept in registers")


def normalised_dtype(x: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype:
    """The dtype of the row that is normalised: x's, or that of x + residual (torch's promotion)."""
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


def rms_norm_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel. Returns (y, new_residual); new_residual is None without `residual`.

    x, residual: [..., D]; weight: [D]; any float dtypes. new_residual has the dtype of
    x + residual; y has out_dtype, by default that of the normalised row. Outputs are contiguous,
    shaped like x.
    """
    n_cols = x.shape[-1]
    x2 = as_rows(x)
    norm_dtype = normalised_dtype(x, residual)
    y = torch.empty(x.shape, dtype=out_dtype or norm_dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=norm_dtype, device=x.device) if residual is not None else None
    n_rows = x2.shape[0]
    if n_rows == 0:
        return y, res_out
    res2 = as_rows(residual) if residual is not None else None
    block_d = triton.next_power_of_2(n_cols)
    grid = lambda meta: (triton.cdiv(n_rows, rows_per_tile(block_d, meta["TILE"])),)
    rms_norm_fwd_kernel[grid](
        x2,
        res2,
        weight,
        y,
        res_out,
        n_rows,
        n_cols,
        x2.stride(0),
        res2.stride(0) if res2 is not None else 0,
        n_cols,
        n_cols,
        eps,
        triton.next_power_of_2(n_rows),
        HAS_RESIDUAL=residual is not None,
        BLOCK_D=block_d,
    )
    return y, res_out


def _sm_count(device: torch.device) -> int:
    if interpreting() or device.type != "cuda":
        return 1  # the interpreter's config asks for INTERPRETER_BWD_PROGRAMS programs "per SM"
    return torch.cuda.get_device_properties(device).multi_processor_count


def _bwd_programs(n_rows: int, block_d: int, meta: dict, sms: int) -> int:
    """Programs of a backward launch: PROGRAMS_PER_SM per SM, at most one per BLOCK_M-row block."""
    return min(triton.cdiv(n_rows, rows_per_tile(block_d, meta["TILE"])), meta["PROGRAMS_PER_SM"] * sms)


def rms_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual_grad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel. Returns (dx, dweight).

    dy, x, residual_grad: [..., D], any float dtypes (x is the normalised input: for the fused op,
    the new residual); weight: [D]. dx is contiguous, shaped like x and in x's dtype; dweight [D]
    in weight's dtype, summed in fp32 over per-program partial rows.
    """
    n_cols = x.shape[-1]
    x2, dy2 = as_rows(x), as_rows(dy)
    dres2 = as_rows(residual_grad) if residual_grad is not None else None
    n_rows = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return dx, torch.zeros_like(weight)
    block_d, sms = triton.next_power_of_2(n_cols), _sm_count(x.device)
    # One partial dweight row per program; the autotuner picks the program count with the config,
    # so the buffer has room for the most any config launches and only the launched rows are summed.
    most = min(n_rows, max(MAX_BWD_PROGRAMS_PER_SM, INTERPRETER_BWD_PROGRAMS) * sms)
    dw_partial = torch.empty((most, n_cols), dtype=torch.float32, device=x.device)
    rms_norm_bwd_kernel[lambda meta: (_bwd_programs(n_rows, block_d, meta, sms),)](
        dy2,
        x2,
        weight,
        dres2,
        dx,
        dw_partial,
        n_rows,
        n_cols,
        dy2.stride(0),
        x2.stride(0),
        dres2.stride(0) if dres2 is not None else 0,
        n_cols,
        eps,
        triton.next_power_of_2(n_rows),
        HAS_RESIDUAL_GRAD=residual_grad is not None,
        BLOCK_D=block_d,
    )
    launched = _bwd_programs(n_rows, block_d, rms_norm_bwd_kernel.best_config.kwargs, sms)
    return dx, dw_partial[:launched].sum(dim=0).to(weight.dtype)


# ----------------------------------------------------------------------------------------------
# torch.library registration. Explicit schemas keep the ops independent of how a given torch
# version parses type annotations. The fake implementations only describe output shapes/dtypes.


def _empty_like_contiguous(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device)


@torch.library.custom_op(
    "grokcopy::rms_norm",
    mutates_args=(),
    schema="(Tensor x, Tensor weight, float eps, ScalarType? out_dtype) -> Tensor",
)
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None) -> torch.Tensor:
    return rms_norm_forward(x, weight, eps, out_dtype=out_dtype)[0]


@_rms_norm_op.register_fake
def _(x, weight, eps, out_dtype):
    return _empty_like_contiguous(x, out_dtype or x.dtype)


@torch.library.custom_op(
    "grokcopy::fused_add_rms_norm",
    mutates_args=(),
    schema="(Tensor x, Tensor residual, Tensor weight, float eps, ScalarType? out_dtype) -> (Tensor, Tensor)",
)
def _fused_add_rms_norm_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_forward(x, weight, eps, residual, out_dtype)


@_fused_add_rms_norm_op.register_fake
def _(x, residual, weight, eps, out_dtype):
    norm_dtype = normalised_dtype(x, residual)
    return _empty_like_contiguous(x, out_dtype or norm_dtype), _empty_like_contiguous(x, norm_dtype)


@torch.library.custom_op(
    "grokcopy::rms_norm_backward",
    mutates_args=(),
    schema="(Tensor dy, Tensor x, Tensor weight, float eps, Tensor? residual_grad) -> (Tensor, Tensor)",
)
def _rms_norm_backward_op(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float, residual_grad: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_backward(dy, x, weight, eps, residual_grad)


@_rms_norm_backward_op.register_fake
def _(dy, x, weight, eps, residual_grad):
    return _empty_like_contiguous(x), _empty_like_contiguous(weight)


def _rms_norm_setup_context(ctx, inputs, output):
    x, weight, eps, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _rms_norm_grad(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dweight = _rms_norm_backward_op(dy, x, weight, ctx.eps, None)
    return dx, dweight, None, None


def _fused_add_rms_norm_setup_context(ctx, inputs, output):
    x, residual, weight, eps, _ = inputs
    # Backward needs the normalised input, which is exactly the new residual (an output).
    ctx.save_for_backward(output[1], weight)
    ctx.eps = eps
    ctx.x_dtype, ctx.residual_dtype = x.dtype, residual.dtype


def _fused_add_rms_norm_grad(ctx, dy, dres):
    new_residual, weight = ctx.saved_tensors
    ds, dweight = _rms_norm_backward_op(dy, new_residual, weight, ctx.eps, dres)
    # new_residual = x + residual, so both inputs receive ds, each in its own dtype (a bf16 branch
    # added to an fp32 residual stream gets a bf16 gradient, as torch's `x + residual` would give).
    return ds.to(ctx.x_dtype), ds.to(ctx.residual_dtype), dweight, None, None


_rms_norm_op.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup_context)
_fused_add_rms_norm_op.register_autograd(_fused_add_rms_norm_grad, setup_context=_fused_add_rms_norm_setup_context)


# ----------------------------------------------------------------------------------------------
# Public API


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """RMSNorm over the last dimension, Llama convention (see module docstring).

    Args:
        x: [..., D], fp32, bf16 or fp16, any strides; D from 1 to 65536.
        weight: [D], any of those dtypes (an fp32 weight on a bf16 x is read as fp32).
        eps: added to the mean square before the reciprocal square root.
        out_dtype: dtype of y; x's dtype by default.

    Returns:
        y: contiguous, x's shape, out_dtype. Differentiable w.r.t. x and weight; dweight is summed
        in fp32 and returned in weight's dtype.
    """
    _check("rms_norm", x, weight, out_dtype=out_dtype)
    return _rms_norm_op(x, weight, eps, out_dtype)


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """new_residual = x + residual; y = rms_norm(new_residual, weight, eps) in one pass.

    Each input is read once and each output written once (an unfused pair reads the sum back).

    Args:
        x, residual: [..., D], same shape, fp32, bf16 or fp16 (they may differ: a bf16 branch x on
            an fp32 residual stream); the sum is formed in fp32 and rounded to the promoted dtype.
        weight: [D], any of those dtypes.
        eps: as in `rms_norm`.
        out_dtype: dtype of y; new_residual's dtype by default.

    Returns:
        (y, new_residual): both contiguous and x's shape; y in out_dtype, new_residual in the
        promoted dtype of x and residual. Differentiable w.r.t. x, residual and weight, with
        gradients flowing from both outputs.
    """
    _check("fused_add_rms_norm", x, weight, residual, out_dtype)
    return _fused_add_rms_norm_op(x, residual, weight, eps, out_dtype)
