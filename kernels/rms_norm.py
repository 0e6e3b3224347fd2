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

The forward saves the fp32 rstd of every row (4 bytes a row) and the backward streams: it reads
rstd instead of recomputing a reduction, keeps several row tiles in flight and reduces dweight once
(see rms_norm_bwd_kernel; the first backward stays selectable, BACKWARD, until a GPU compares them).

The ops are registered by `kernel_op` (kernels/_common.py) with `register_autograd`: on a GPU they
are `torch.library.triton_op`s, so torch.compile sees the kernels and schedules around them; under
the CPU interpreter opaque custom ops, because there tracing a triton_op would run the kernels.
"""

from __future__ import annotations

import functools
import os

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
    kernel_op,
    launch,
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
# STAGES (streaming backward): row tiles in flight per program (`tl.range(..., num_stages=...)`).
# The first config of the forward and recomputing-backward lists is the one measured on an H100 on
# 2026-11-25 (bench/results/h100-80gb-hbm3-2026-11-25: backward at 15% of copy bandwidth); the
# others trade warps per program for more programs in flight, which a latency-bound row loop
# needs. GROKCOPY_AUTOTUNE=0 keeps only the first. The interpreter runs programs one after another: one config, and a
# handful of backward programs are enough to exercise the partial-sum reduction across programs.
TILE_ELEMENTS = 4096
INTERPRETER_BWD_PROGRAMS = 4
_FWD_SHAPES = [(4096, 16), (4096, 8), (4096, 4), (2048, 8), (2048, 4), (8192, 16), (1024, 4)]  # (TILE, warps)
# (TILE, warps, PROGRAMS_PER_SM): the recomputing backward's list, as measured on the H100 and H200.
_RECOMPUTE_BWD_SHAPES = [(4096, 16, 2), (4096, 16, 4), (4096, 8, 4), (4096, 4, 8), (2048, 8, 8), (2048, 4, 8),
                         (8192, 16, 2)]
# (TILE, warps, PROGRAMS_PER_SM, STAGES): the streaming backward's. It wants bytes in flight per SM
# (Little's law: ~18 KB at H100 latency and bandwidth): programs per SM x stages x a tile of dy and
# x (4 bytes an element in bf16, 8 with the fused op's fp32 residual gradient): 32 KB to 128 KB
# in bf16 here. (4096, 16, 2, 1) is the measured recomputing config's shape with one tile in
# flight per program: against it a GPU sees what the saved rstd and the dweight tile give alone.
_STREAMING_BWD_SHAPES = [(4096, 8, 2, 2), (4096, 16, 2, 1), (4096, 8, 4, 1), (2048, 4, 4, 2), (2048, 8, 4, 2),
                         (2048, 4, 8, 1), (1024, 4, 8, 2), (1024, 2, 16, 2)]
MAX_BWD_PROGRAMS_PER_SM = max(shape[2] for shape in _RECOMPUTE_BWD_SHAPES + _STREAMING_BWD_SHAPES)
# Which backward the ops run: "streaming" (default: fp32 rstd saved by the forward, pipelined row
# loop, dweight accumulated in a register tile and reduced once) or "recompute" (the backward
# measured on the H100 and H200: rstd recomputed from x, dweight row-summed every step). Both stay
# until a GPU compares them (issue 29); GROKCOPY_RMS_NORM_BACKWARD picks one at import.
BACKWARDS = ("streaming", "recompute")
BACKWARD = os.environ.get("GROKCOPY_RMS_NORM_BACKWARD", "streaming")
if BACKWARD not in BACKWARDS:
    raise ValueError(f"GROKCOPY_RMS_NORM_BACKWARD={BACKWARD!r}; expected one of {BACKWARDS}")


def gpu_fwd_configs() -> list[triton.Config]:
    """The forward's autotune list on a GPU."""
    return [triton.Config({"TILE": tile}, num_warps=w) for tile, w in _FWD_SHAPES]


def gpu_bwd_configs(streaming: bool) -> list[triton.Config]:
    """The autotune list on a GPU of the streaming backward, or of the recomputing one."""
    shapes = _STREAMING_BWD_SHAPES if streaming else [(t, w, p, None) for t, w, p in _RECOMPUTE_BWD_SHAPES]
    return [triton.Config({"TILE": tile, "PROGRAMS_PER_SM": pps, "STAGES": stages}, num_warps=w)
            for tile, w, pps, stages in shapes]


def _fwd_configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"TILE": TILE_ELEMENTS}, num_warps=1)]
    return autotuned(gpu_fwd_configs())


def _bwd_configs(streaming: bool) -> list[triton.Config]:
    if interpreting():
        stages = 2 if streaming else None
        return [triton.Config({"TILE": TILE_ELEMENTS, "PROGRAMS_PER_SM": INTERPRETER_BWD_PROGRAMS, "STAGES": stages},
                              num_warps=1)]
    return autotuned(gpu_bwd_configs(streaming))


def _prune_by_thread_load(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep configs that give each thread 4 to 32 elements of a tile: fewer wastes lanes on masked
    or idle work, more holds too many fp32 values of x, dy (and the residual) per thread and spills
    (static sm_90a table: D = 11008 at 16 warps, 32 elements each, spills 376 B in the backward).
    The streaming backward also keeps its dweight tile in registers: at most 16 elements there."""
    block_d = kwargs["BLOCK_D"]
    most = 16 if kwargs.get("STREAMING", False) else 32

    def per_thread(c: triton.Config) -> int:
        return max(c.kwargs["TILE"], block_d) // (c.num_warps * 32)

    # Rows too wide for every config (D = 11008): the least loaded one, which spills least.
    return [c for c in configs if 4 <= per_thread(c) <= most] or [min(configs, key=per_thread)]


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
    rstd_ptr,
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
    """y = weight * round(x * rstd) for BLOCK_M whole rows, each read once and written once; the fp32
    rstd [n_rows] of each row is stored for the backward (4 bytes a row).

    With HAS_RESIDUAL, x + residual is formed in fp32, rounded to the new residual's dtype and
    stored; that rounded sum is what gets normalised, so y == rms_norm(new_residual). Each pointer
    keeps its own dtype (x bf16 and residual fp32, say); y is written in y_ptr's dtype.
    """
    BLOCK_M: tl.constexpr = (TILE + BLOCK_D - 1) // BLOCK_D  # rows_per_tile: both are powers of two
    eps = fp32_scalar(eps)
    row_ids = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < n_cols
    mask = (row_ids < n_rows)[:, None] & col_mask[None, :]
    # int64 row offsets: rows * stride passes 2**31 elements at 65536 tokens x 32768 columns.
    rows = row_ids.to(tl.int64)[:, None]
    cols = cols[None, :]

    # The weight is loaded first, so that its load is in flight while the row's sum of squares waits
    # for x (issued after the reduction, it would add a second memory latency to every tile).
    w = tl.load(w_ptr + cols, mask=col_mask[None, :], other=0.0).to(tl.float32)
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
    tl.store(rstd_ptr + row_ids, rstd, mask=row_ids < n_rows)
    # Round the normalised row to the dtype of the normalised input before the weight multiply
    # (HF's order); for an fp32 residual stream that rounding is a no-op.
    if HAS_RESIDUAL:
        normed = cast_rne(x * rstd[:, None], res_out_ptr.dtype.element_ty).to(tl.float32)
    else:
        normed = cast_rne(x * rstd[:, None], x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + rows * stride_y + cols, cast_rne(normed * w, y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_bwd_kernel(
    dy_ptr,
    x_ptr,
    w_ptr,
    rstd_ptr,
    dres_ptr,
    dx_ptr,
    dx_branch_ptr,
    dw_partial_ptr,
    n_partials_ptr,
    n_rows,
    n_cols,
    stride_dy,
    stride_x,
    stride_dres,
    stride_dx,
    eps,
    ROWS_BUCKET,
    HAS_RESIDUAL_GRAD: tl.constexpr,
    HAS_BRANCH_GRAD: tl.constexpr,
    STREAMING: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE: tl.constexpr,
    PROGRAMS_PER_SM: tl.constexpr,
    STAGES: tl.constexpr,
):
    """dx for this program's contiguous range of rows, and its partial dweight row.

    With n = x * rstd and g = dy * weight, the gradient of the normalisation is
        dx = rstd * (g - n * mean(g * n))
    and dweight = sum over rows of dy * round(n).

    STREAMING reads the fp32 rstd [n_rows] that the forward saved (4 bytes a row against 2 * D of
    x): no sum of squares, so a row tile's only reduction is mean(g * n), and the loop is a
    `tl.range` with STAGES tiles in flight, which the compiler software-pipelines (cp.async into
    shared memory) so that the next tiles' loads overlap this tile's arithmetic. dweight gathers in
    a [BLOCK_M, BLOCK_D] fp32 register tile, summed over its rows once after the loop. Otherwise
    (the recomputing backward) rstd is recomputed from x and each step adds its rows' column sum
    to a [BLOCK_D] accumulator: a cross-warp reduction through shared memory every step.

    dweight is a reduction over every row. Rather than atomics (contended, and their order makes
    the result non-deterministic) each program owns a contiguous range of rows and writes one
    partial row (zeros when its range is empty); program 0 also writes how many programs ran, and
    `rms_norm_dweight_kernel` adds the partial rows. The ranges split the BLOCK_M-row blocks
    evenly over the grid, so no block straddles two programs and the last programs may get fewer.

    With HAS_RESIDUAL_GRAD (the fused-add op) x is the new residual s = x_in + residual_in, and the
    gradient reaching s from its own use downstream is added: ds = dx_norm + dres. With
    HAS_BRANCH_GRAD ds is also stored in dx_branch_ptr's dtype (x_in's, bf16 when the residual is
    fp32), the gradient of the branch x_in, so no cast pass over ds follows.
    """
    BLOCK_M: tl.constexpr = (TILE + BLOCK_D - 1) // BLOCK_D  # rows_per_tile: both are powers of two
    eps = fp32_scalar(eps)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if STREAMING:
        dw_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    else:
        dw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    rows_per_program = tl.cdiv(tl.cdiv(n_rows, BLOCK_M), tl.num_programs(0)) * BLOCK_M
    first_row = pid * rows_per_program
    last_row = tl.minimum(first_row + rows_per_program, n_rows)
    # STAGES is None for the recomputing backward: then this is a plain `range`, as it was.
    for start in tl.range(first_row, last_row, BLOCK_M, num_stages=STAGES):
        row_ids = start + tl.arange(0, BLOCK_M)
        mask = (row_ids < n_rows)[:, None] & col_mask[None, :]
        rows = row_ids.to(tl.int64)[:, None]
        # Rows past the end load as zeros (and rstd as 0 or rsqrt(eps)): they add nothing.
        x = tl.load(x_ptr + rows * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if STREAMING:
            rstd = tl.load(rstd_ptr + row_ids, mask=row_ids < n_rows, other=0.0)
        else:
            rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
        normed = x * rstd[:, None]
        # The forward multiplied weight by the rounded normalised value; its derivative is that.
        dw_rows = dy * cast_rne(normed, x_ptr.dtype.element_ty).to(tl.float32)
        if STREAMING:
            dw_acc += dw_rows
        else:
            dw_acc += tl.sum(dw_rows, axis=0)

        g = dy * w[None, :]
        mean_gn = tl.sum(g * normed, axis=1) / n_cols
        dx = (g - normed * mean_gn[:, None]) * rstd[:, None]
        if HAS_RESIDUAL_GRAD:
            dx += tl.load(dres_ptr + rows * stride_dres + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows * stride_dx + cols[None, :], cast_rne(dx, dx_ptr.dtype.element_ty), mask=mask)
        if HAS_BRANCH_GRAD:
            tl.store(dx_branch_ptr + rows * stride_dx + cols[None, :], cast_rne(dx, dx_branch_ptr.dtype.element_ty),
                     mask=mask)

    if STREAMING:
        dw_row = tl.sum(dw_acc, axis=0)
    else:
        dw_row = dw_acc
    tl.store(dw_partial_ptr + pid * n_cols + cols, dw_row, mask=col_mask)
    if pid == 0:
        tl.store(n_partials_ptr, tl.num_programs(0))


# One kernel, autotuned over each kind's config list; BACKWARD picks the one the ops launch.
BWD_KERNELS = {
    kind: triton.autotune(configs=_bwd_configs(kind == "streaming"),
                          key=["BLOCK_D", "ROWS_BUCKET", "HAS_RESIDUAL_GRAD", "HAS_BRANCH_GRAD"],
                          prune_configs_by={"early_config_prune": _prune_by_thread_load})(rms_norm_bwd_kernel)
    for kind in BACKWARDS
}

# Column block of the dweight reduction: 128 fp32 columns x 32 partial rows a step, 4 warps.
DW_BLOCK_N = 128
DW_BLOCK_P = 32


@triton.jit
def rms_norm_dweight_kernel(dw_partial_ptr, n_partials_ptr, dw_ptr, n_cols, BLOCK_N: tl.constexpr,
                            BLOCK_P: tl.constexpr):
    """dweight[cols] = sum of the backward's partial rows, in fp32, stored once in dw_ptr's dtype.

    One launch over column blocks (grid cdiv(D, BLOCK_N)); the number of partial rows is read from
    n_partials_ptr, written by the backward itself, because it depends on the autotuned config and
    the host would otherwise have to ask the autotuner after the launch (and then add and convert
    with two more launches, as the first backward did). Fixed order: deterministic.
    """
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    n_partials = tl.load(n_partials_ptr)
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for start in range(0, n_partials, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts < n_partials)[:, None] & col_mask[None, :]
        acc += tl.load(dw_partial_ptr + parts.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    tl.store(dw_ptr + cols, cast_rne(tl.sum(acc, axis=0), dw_ptr.dtype.element_ty), mask=col_mask)


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
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch the forward kernel. Returns (y, new_residual, rstd); new_residual is None without `residual`.

    x, residual: [..., D]; weight: [D]; any float dtypes. new_residual has the dtype of
    x + residual; y has out_dtype, by default that of the normalised row. Outputs are contiguous,
    shaped like x; rstd is fp32 [rows] (rows = x.numel() // D), 1 / rms of each normalised row.
    """
    n_cols = x.shape[-1]
    x2 = as_rows(x)
    norm_dtype = normalised_dtype(x, residual)
    y = torch.empty(x.shape, dtype=out_dtype or norm_dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=norm_dtype, device=x.device) if residual is not None else None
    n_rows = x2.shape[0]
    rstd = torch.empty((n_rows,), dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y, res_out, rstd
    res2 = as_rows(residual) if residual is not None else None
    block_d = triton.next_power_of_2(n_cols)
    grid = lambda meta: (triton.cdiv(n_rows, rows_per_tile(block_d, meta["TILE"])),)
    launch(rms_norm_fwd_kernel, x)[grid](
        x2,
        res2,
        weight,
        y,
        res_out,
        rstd,
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
    return y, res_out, rstd


def _sm_count(device: torch.device) -> int:
    if interpreting() or device.type != "cuda":
        return 1  # the interpreter's config asks for INTERPRETER_BWD_PROGRAMS programs "per SM"
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_sm_count(index: int) -> int:  # asked once per device, not at every backward (host time)
    return torch.cuda.get_device_properties(index).multi_processor_count


def rms_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    eps: float,
    residual_grad: torch.Tensor | None = None,
    branch_dtype: torch.dtype | None = None,
    backward: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch the backward kernel and the dweight reduction. Returns (dx, dx_branch, dweight).

    dy, x, residual_grad: [..., D], any float dtypes (x is the normalised input: for the fused op,
    the new residual); weight: [D]; rstd: fp32 [rows] from the forward (read by the streaming
    backward only). dx is contiguous, shaped like x and in x's dtype; dx_branch is the same values
    in `branch_dtype` (None without it); dweight [D] in weight's dtype, summed in fp32 over
    per-program partial rows. `backward`: "streaming" or "recompute", BACKWARD by default.
    """
    kind = backward or BACKWARD
    n_cols = x.shape[-1]
    x2, dy2 = as_rows(x), as_rows(dy)
    dres2 = as_rows(residual_grad) if residual_grad is not None else None
    n_rows = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dx_branch = torch.empty(x.shape, dtype=branch_dtype, device=x.device) if branch_dtype is not None else None
    dweight = torch.empty_like(weight)
    if n_rows == 0:
        return dx, dx_branch, dweight.zero_()
    block_d, sms = triton.next_power_of_2(n_cols), _sm_count(x.device)
    # One partial dweight row per program; the autotuner picks the program count with the config,
    # so the buffer has room for the most any config launches, and the kernel says how many ran.
    most = min(n_rows, max(MAX_BWD_PROGRAMS_PER_SM, INTERPRETER_BWD_PROGRAMS) * sms)
    dw_partial = torch.empty((most, n_cols), dtype=torch.float32, device=x.device)
    n_partials = torch.empty((1,), dtype=torch.int32, device=x.device)

    def grid(meta):  # PROGRAMS_PER_SM per SM, at most one per BLOCK_M-row block
        return (min(triton.cdiv(n_rows, rows_per_tile(block_d, meta["TILE"])), meta["PROGRAMS_PER_SM"] * sms),)

    launch(BWD_KERNELS[kind], x)[grid](
        dy2,
        x2,
        weight,
        rstd,
        dres2,
        dx,
        dx_branch,
        dw_partial,
        n_partials,
        n_rows,
        n_cols,
        dy2.stride(0),
        x2.stride(0),
        dres2.stride(0) if dres2 is not None else 0,
        n_cols,
        eps,
        triton.next_power_of_2(n_rows),
        HAS_RESIDUAL_GRAD=residual_grad is not None,
        HAS_BRANCH_GRAD=branch_dtype is not None,
        STREAMING=kind == "streaming",
        BLOCK_D=block_d,
    )
    launch(rms_norm_dweight_kernel, x)[(triton.cdiv(n_cols, DW_BLOCK_N),)](
        dw_partial, n_partials, dweight, n_cols, BLOCK_N=DW_BLOCK_N, BLOCK_P=DW_BLOCK_P, num_warps=4)
    return dx, dx_branch, dweight


# ----------------------------------------------------------------------------------------------
# torch.library registration (kernels/_common.py `kernel_op`: triton_op on a GPU, custom_op under
# the interpreter; schemas from the annotations). The fake implementations only describe output
# shapes and dtypes (triton_op traces the function itself on fake tensors instead).


def _empty_like_contiguous(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device)


def _rstd_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty((x.numel() // x.shape[-1],), dtype=torch.float32, device=x.device)


def _rms_norm_fake(x, weight, eps, out_dtype):
    return _empty_like_contiguous(x, out_dtype or x.dtype), _rstd_like(x)


@kernel_op("rms_norm", _rms_norm_fake)
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 out_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    y, _, rstd = rms_norm_forward(x, weight, eps, out_dtype=out_dtype)
    return y, rstd


def _fused_add_rms_norm_fake(x, residual, weight, eps, out_dtype):
    norm_dtype = normalised_dtype(x, residual)
    return _empty_like_contiguous(x, out_dtype or norm_dtype), _empty_like_contiguous(x, norm_dtype), _rstd_like(x)


@kernel_op("fused_add_rms_norm", _fused_add_rms_norm_fake)
def _fused_add_rms_norm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                           out_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return rms_norm_forward(x, weight, eps, residual, out_dtype)


def _rms_norm_backward_fake(dy, x, weight, rstd, eps, residual_grad, branch_dtype):
    dx_branch = _empty_like_contiguous(x, branch_dtype) if branch_dtype is not None else x.new_empty((0,))
    return _empty_like_contiguous(x), dx_branch, _empty_like_contiguous(weight)


@kernel_op("rms_norm_backward", _rms_norm_backward_fake)
def _rms_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, eps: float,
                          residual_grad: torch.Tensor | None,
                          branch_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dx_branch, dweight = rms_norm_backward(dy, x, weight, rstd, eps, residual_grad, branch_dtype)
    # ops return tensors, not None, and their outputs may not alias: an empty stand-in
    return dx, dx_branch if dx_branch is not None else x.new_empty((0,)), dweight


def _rms_norm_setup_context(ctx, inputs, output):
    x, weight, eps, _ = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.eps = eps
    ctx.mark_non_differentiable(output[1])


def _rms_norm_grad(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, _, dweight = _rms_norm_backward_op(dy, x, weight, rstd, ctx.eps, None, None)
    return dx, dweight, None, None


def _fused_add_rms_norm_setup_context(ctx, inputs, output):
    x, residual, weight, eps, _ = inputs
    # Backward needs the normalised input, which is exactly the new residual (an output).
    ctx.save_for_backward(output[1], weight, output[2])
    ctx.eps = eps
    ctx.x_dtype, ctx.residual_dtype = x.dtype, residual.dtype
    ctx.mark_non_differentiable(output[2])


def _fused_add_rms_norm_grad(ctx, dy, dres, _drstd):
    new_residual, weight, rstd = ctx.saved_tensors
    # new_residual = x + residual, so both inputs receive ds, each in its own dtype (a bf16 branch
    # added to an fp32 residual stream gets a bf16 gradient, as torch's `x + residual` would give).
    # The kernel writes ds in new_residual's dtype and, where x's differs, a second time in x's.
    branch_dtype = ctx.x_dtype if ctx.x_dtype != new_residual.dtype else None
    ds, ds_branch, dweight = _rms_norm_backward_op(dy, new_residual, weight, rstd, ctx.eps, dres, branch_dtype)
    dx = ds_branch if branch_dtype is not None else ds
    return dx, ds.to(ctx.residual_dtype), dweight, None, None


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
    return _rms_norm_op(x, weight, eps, out_dtype)[0]


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
    return _fused_add_rms_norm_op(x, residual, weight, eps, out_dtype)[:2]
