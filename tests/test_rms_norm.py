"""rms_norm and fused_add_rms_norm against a float64 reference: values, gradients, errors, compile.

On CPU the kernels run under the Triton interpreter (tests/conftest.py), on a GPU machine for real.
"""

import pytest
import torch
from kernel_testing import DEVICE, assert_rel_close, float64_leaf, make

from grokcopy.kernels import fused_add_rms_norm, rms_norm
from grokcopy.kernels.rms_norm import (
    BACKWARDS,
    MAX_ROW,
    fused_add_rms_norm_reference,
    rms_norm_backward,
    rms_norm_reference,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative-error bounds (‖out − ref‖ / ‖ref‖ against float64). Every output is rounded to its
# dtype once or twice (y: normalised value, then the weight product; the fused sum once more), so
# the error is a small multiple of the unit roundoff u: measured at most ~3e-3 in bf16 (u = 2^-8)
# and ~4e-4 in fp16 (u = 2^-11). The bounds are one machine epsilon, 2u, for the half types; fp32
# measures ~1e-7 and gets 1e-5 to leave room for a GPU's different reduction order.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}

# (shape, layout, eps, scale). A handful of rows each keeps the interpreter fast.
CASES = [
    # With D = 1, y = x / sqrt(x^2 + eps) is flat unless |x| ~ sqrt(eps): with a tiny eps, dx is the
    # difference of two nearly equal terms and fp32 keeps only a couple of its digits (torch's
    # autograd too). A large eps keeps the float64 comparison meaningful.
    pytest.param((4, 1), "contiguous", 0.1, 1.0, id="D1"),
    pytest.param((4, 3), "contiguous", 1e-6, 1.0, id="D3"),
    pytest.param((4, 127), "contiguous", 1e-6, 1.0, id="D127"),
    pytest.param((4, 768), "contiguous", 1e-6, 1.0, id="D768"),
    pytest.param((4, 1000), "contiguous", 1e-6, 1.0, id="D1000"),
    # 9 rows of 4097: several backward programs, each looping over several rows (partial dweight).
    pytest.param((9, 4097), "contiguous", 1e-6, 1.0, id="D4097"),
    pytest.param((1, 768), "contiguous", 1e-6, 1.0, id="single-row"),
    pytest.param((2, 3, 1000), "contiguous", 1e-6, 1.0, id="3d"),
    # Small rows are packed many to a program: 2600 rows of 3 fill several programs, the last partly.
    pytest.param((2, 1300, 3), "contiguous", 1e-6, 1.0, id="many-rows-D3"),
    pytest.param((6, 127), "transposed", 1e-6, 1.0, id="transposed"),
    pytest.param((2, 3, 768), "sliced", 1e-6, 1.0, id="sliced"),
    # eps comparable to mean(x^2): a kernel that dropped or misplaced eps fails here, not above.
    pytest.param((4, 768), "contiguous", 0.5, 1.0, id="large-eps"),
    # x^2 summed over a row overflows fp16 (max 65504): proves the statistics are fp32.
    pytest.param((4, 1000), "contiguous", 1e-6, 300.0, id="large-values"),
]


@pytest.fixture(params=BACKWARDS)
def backward(request, monkeypatch):
    """Each backward kind in turn (the ops launch kernels.rms_norm.BACKWARD): both must stay correct
    until a GPU has compared them."""
    import importlib

    monkeypatch.setattr(importlib.import_module("grokcopy.kernels.rms_norm"), "BACKWARD", request.param)
    return request.param


def make_weight(d, dtype):
    return (1.0 + 0.1 * torch.randn(d, device=DEVICE)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout,eps,scale", CASES)
def test_rms_norm_matches_float64_reference(poisoned_empty, backward, shape, layout, eps, scale, dtype):
    x = make(shape, dtype, layout, scale).requires_grad_()
    weight = make_weight(shape[-1], dtype).requires_grad_()
    dy = make(shape, dtype, layout)

    y = rms_norm(x, weight, eps)
    dx, dweight = torch.autograd.grad(y, (x, weight), dy)
    assert poisoned_empty.count(tuple(shape)) >= 2  # y and dx

    x64, w64 = float64_leaf(x), float64_leaf(weight)
    y64 = rms_norm_reference(x64, w64, eps)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    tol = TOL[dtype]
    assert y.dtype == dx.dtype == dweight.dtype == dtype
    assert_rel_close(y, y64, tol, "y")
    assert_rel_close(dx, dx64, tol, "dx")
    assert_rel_close(dweight, dw64, tol, "dweight")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout,eps,scale", CASES)
def test_fused_add_rms_norm_matches_float64_reference(poisoned_empty, backward, shape, layout, eps, scale, dtype):
    x = make(shape, dtype, layout, scale).requires_grad_()
    residual = make(shape, dtype, layout, scale).requires_grad_()
    weight = make_weight(shape[-1], dtype).requires_grad_()
    dy, dres = make(shape, dtype, layout), make(shape, dtype, layout)

    y, new_residual = fused_add_rms_norm(x, residual, weight, eps)
    grads = torch.autograd.grad((y, new_residual), (x, residual, weight), (dy, dres))
    assert poisoned_empty.count(tuple(shape)) >= 3  # y, new_residual, dx

    # The float64 reference adds exactly, where the op rounds the sum to its dtype: that is one
    # more rounding, inside the error budget.
    leaves64 = [float64_leaf(t) for t in (x, residual, weight)]
    y64, res64 = fused_add_rms_norm_reference(*leaves64, eps)
    grads64 = torch.autograd.grad((y64, res64), leaves64, (dy.double(), dres.double()))
    tol = TOL[dtype]
    assert_rel_close(y, y64, tol, "y")
    assert_rel_close(new_residual, res64, tol, "new_residual")
    for name, g, g64 in zip(("dx", "dresidual", "dweight"), grads, grads64, strict=True):
        assert g.dtype == dtype
        assert_rel_close(g, g64, tol, name)


@pytest.mark.parametrize("shape", [(4, 768), (2, 3, 1000), (6, 127)], ids=["D768", "3d", "D127"])
def test_mixed_precision_matches_float64_reference(poisoned_empty, backward, shape):
    """The model's autocast policy (model/llama.py): a bf16 branch x added to the fp32 residual
    stream with an fp32 weight, y written in bf16 for the next matmul. The sum and the statistics
    stay fp32, so y carries one bf16 rounding, new_residual and the residual/weight gradients fp32
    accuracy, and x's gradient one bf16 rounding."""
    x = make(shape, torch.bfloat16).requires_grad_()
    residual = make(shape, torch.float32).requires_grad_()
    weight = make_weight(shape[-1], torch.float32).requires_grad_()
    dy, dres = make(shape, torch.bfloat16), make(shape, torch.float32)

    y, new_residual = fused_add_rms_norm(x, residual, weight, 1e-6, out_dtype=torch.bfloat16)
    dx, dresidual, dweight = torch.autograd.grad((y, new_residual), (x, residual, weight), (dy, dres))
    assert (y.dtype, new_residual.dtype) == (torch.bfloat16, torch.float32)
    assert (dx.dtype, dresidual.dtype, dweight.dtype) == (torch.bfloat16, torch.float32, torch.float32)

    leaves64 = [float64_leaf(t) for t in (x, residual, weight)]
    y64, res64 = fused_add_rms_norm_reference(*leaves64, 1e-6)
    grads64 = torch.autograd.grad((y64, res64), leaves64, (dy.double(), dres.double()))
    assert_rel_close(y, y64, TOL[torch.bfloat16], "y")
    assert_rel_close(new_residual, res64, TOL[torch.float32], "new_residual")
    assert_rel_close(dx, grads64[0], TOL[torch.bfloat16], "dx")
    assert_rel_close(dresidual, grads64[1], TOL[torch.float32], "dresidual")
    assert_rel_close(dweight, grads64[2], TOL[torch.float32], "dweight")

    # the plain norm the same way: an fp32 row (the residual stream), bf16 out
    xs = make(shape, torch.float32).requires_grad_()
    ys = rms_norm(xs, weight, 1e-6, out_dtype=torch.bfloat16)
    dxs, dws = torch.autograd.grad(ys, (xs, weight), dy)
    assert (ys.dtype, dxs.dtype, dws.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    x64, w64 = float64_leaf(xs), float64_leaf(weight)
    ys64 = rms_norm_reference(x64, w64, 1e-6)
    dxs64, dws64 = torch.autograd.grad(ys64, (x64, w64), dy.double())
    assert_rel_close(ys, ys64, TOL[torch.bfloat16], "y (plain)")
    assert_rel_close(dxs, dxs64, TOL[torch.float32], "dx (plain)")
    assert_rel_close(dws, dws64, TOL[torch.float32], "dweight (plain)")


@pytest.mark.parametrize("used", ["y", "new_residual"])
def test_fused_add_rms_norm_gradient_from_one_output(used):
    """When only one output feeds the loss, gradients still reach every input through it."""
    shape = (5, 96)
    x, residual = make(shape, torch.float32).requires_grad_(), make(shape, torch.float32).requires_grad_()
    weight = make_weight(shape[-1], torch.float32).requires_grad_()
    out = dict(zip(("y", "new_residual"), fused_add_rms_norm(x, residual, weight), strict=True))[used]
    leaves64 = [float64_leaf(t) for t in (x, residual, weight)]
    out64 = dict(zip(("y", "new_residual"), fused_add_rms_norm_reference(*leaves64), strict=True))[used]
    g = make(shape, torch.float32)
    grads = torch.autograd.grad(out, (x, residual, weight), g)
    # The reference's new_residual does not involve weight at all: its dweight is zero.
    grads64 = torch.autograd.grad(out64, leaves64, g.double(), materialize_grads=True)
    for name, a, b in zip(("dx", "dresidual"), grads[:2], grads64[:2], strict=True):
        assert_rel_close(a, b, TOL[torch.float32], name)
    if used == "y":
        assert_rel_close(grads[2], grads64[2], TOL[torch.float32], "dweight")
    else:
        assert torch.equal(grads[2], grads64[2].float())


def test_weight_multiplies_the_rounded_normalised_value():
    """bf16 output equals HF's `weight * normed.to(bf16)` bit for bit (the documented order).

    Rounding before the multiply differs from multiplying in fp32 and rounding once in a sizeable
    fraction of elements, so a kernel with the other order fails this exact comparison.
    """
    x, weight = make((8, 1000), torch.bfloat16), make_weight(1000, torch.bfloat16)
    y = rms_norm(x, weight)
    xf = x.float()
    hf = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    other_order = (weight.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert not torch.equal(hf, other_order)
    # Identical up to a rare one-ulp difference where fp32 sums of squares, summed in another
    # order, tip a rounding boundary.
    mismatch = (y != hf).float().mean().item()
    assert mismatch < 0.01, f"{mismatch:.1%} of elements differ from HF's order"


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_output_is_rms_norm_of_the_stored_sum(dtype):
    """y normalises the rounded sum that is returned, so it equals rms_norm(new_residual) exactly.

    Normalising the unrounded fp32 sum instead stays within the float64 tolerances above but
    breaks this identity, which a model relies on when it mixes the fused and unfused ops.
    """
    x, residual, weight = make((6, 1000), dtype), make((6, 1000), dtype), make_weight(1000, dtype)
    y, new_residual = fused_add_rms_norm(x, residual, weight)
    assert torch.equal(new_residual, x + residual)
    assert torch.equal(y, rms_norm(new_residual, weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 768), (2, 1300, 3), (5, 4097)], ids=["37x768", "2600x3", "5x4097"])
def test_forward_saves_fp32_rstd_and_the_streaming_backward_reads_it(shape, dtype):
    """The forward's second output is 1 / rms of each (rounded) normalised row in fp32; the
    streaming backward reads it instead of recomputing it (a wrong rstd changes its dx, not the
    recomputing backward's), at row counts that are no multiple of the rows a program steps over
    (4096 // D) and at odd widths."""
    x, residual, weight = make(shape, dtype), make(shape, torch.float32), make_weight(shape[-1], torch.float32)
    y, rstd = torch.ops.grokcopy.rms_norm(x, weight, 1e-6, None)
    _, new_residual, fused_rstd = torch.ops.grokcopy.fused_add_rms_norm(x, residual, weight, 1e-6, torch.bfloat16)
    for row, saved in ((x, rstd), (new_residual, fused_rstd)):
        expected = torch.rsqrt(row.double().pow(2).mean(-1) + 1e-6).flatten()
        assert saved.dtype == torch.float32 and saved.shape == (row.numel() // shape[-1],)
        assert_rel_close(saved, expected, 1e-6, "rstd")

    dy = make(shape, dtype)
    for kind, reads_rstd in (("streaming", True), ("recompute", False)):
        dx, _, dweight = rms_norm_backward(dy, x, weight, rstd, 1e-6, backward=kind)
        dx_wrong, _, dweight_wrong = rms_norm_backward(dy, x, weight, rstd * 2, 1e-6, backward=kind)
        assert torch.equal(dx, dx_wrong) != reads_rstd, kind
        assert torch.equal(dweight, dweight_wrong) != reads_rstd, kind


def test_zero_rows():
    x, weight = make((0, 64), torch.float32).requires_grad_(), make_weight(64, torch.float32).requires_grad_()
    y = rms_norm(x, weight)
    dx, dweight = torch.autograd.grad(y, (x, weight), torch.ones_like(y))
    assert y.shape == dx.shape == (0, 64) and torch.equal(dweight, torch.zeros(64, device=DEVICE))


def t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(shape, device=device).to(dtype)


@pytest.mark.parametrize(
    "call,error,match",
    [
        # wrong dtypes
        (lambda: rms_norm(t(2, 8, dtype=torch.float64), t(8, dtype=torch.float64)), TypeError, r"rms_norm.*float64"),
        (lambda: rms_norm(t(2, 8), t(8), out_dtype=torch.float64), TypeError, r"rms_norm: out_dtype torch.float64"),
        (
            lambda: fused_add_rms_norm(t(2, 8), t(2, 8, dtype=torch.float64), t(8)),
            TypeError,
            r"fused_add_rms_norm\(x, residual, weight\).*argument 1 has dtype torch.float64",
        ),
        (lambda: rms_norm(t(2, 8).cpu().numpy(), t(8)), TypeError, r"rms_norm.*ndarray"),
        # shape mismatches
        (lambda: rms_norm(t(2, 8), t(7)), ValueError, r"rms_norm: weight has shape \(7,\)"),
        (lambda: rms_norm(t(2, 8), t(2, 8)), ValueError, r"rms_norm: weight has shape \(2, 8\)"),
        (
            lambda: fused_add_rms_norm(t(2, 8), t(3, 8), t(8)),
            ValueError,
            r"fused_add_rms_norm: residual has shape \(3, 8\)",
        ),
        (lambda: rms_norm(t(2, 0), t(0)), ValueError, r"rms_norm: x must have a non-empty"),
        (lambda: rms_norm(t(1, MAX_ROW + 1), t(MAX_ROW + 1)), ValueError, r"exceeds 65536"),
        # device mismatch (the meta device exists on every machine)
        (lambda: rms_norm(t(2, 8), t(8, device="meta")), ValueError, r"rms_norm.*argument 1 is on meta"),
        (
            lambda: fused_add_rms_norm(t(2, 8), t(2, 8, device="meta"), t(8)),
            ValueError,
            r"fused_add_rms_norm.*argument 1 is on meta",
        ),
    ],
    ids=[
        "float64",
        "out-dtype",
        "residual-dtype",
        "not-a-tensor",
        "weight-size",
        "weight-rank",
        "residual-shape",
        "empty-row",
        "row-too-wide",
        "weight-device",
        "residual-device",
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "op,args",
    [
        ("rms_norm", lambda: (make((3, 40), torch.float32), make_weight(40, torch.float32), 1e-6, None)),
        (
            "rms_norm",
            lambda: (make((3, 40), torch.float32), make_weight(40, torch.float32), 1e-6, torch.bfloat16),
        ),
        (
            "fused_add_rms_norm",
            lambda: (make((3, 40), torch.float32), make((3, 40), torch.float32), make_weight(40, torch.float32), 1e-6,
                     None),
        ),
        (  # the model's mixed precision: bf16 branch, fp32 residual stream and weight, bf16 output
            "fused_add_rms_norm",
            lambda: (make((3, 40), torch.bfloat16), make((3, 40), torch.float32), make_weight(40, torch.float32),
                     1e-6, torch.bfloat16),
        ),
        (
            "rms_norm_backward",
            lambda: (make((3, 40), torch.float32), make((3, 40), torch.float32), make_weight(40, torch.float32),
                     torch.rand(3, device=DEVICE) + 0.5, 1e-6, None, None),
        ),
        (  # the fused op's backward under the model's mixed precision: ds fp32 plus a bf16 copy for the branch
            "rms_norm_backward",
            lambda: (make((3, 40), torch.bfloat16), make((3, 40), torch.float32), make_weight(40, torch.float32),
                     torch.rand(3, device=DEVICE) + 0.5, 1e-6, make((3, 40), torch.float32), torch.bfloat16),
        ),
    ],
)
def test_opcheck(op, args):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch agree with eager."""
    inputs = args()
    for t in inputs:
        if isinstance(t, torch.Tensor) and op != "rms_norm_backward":
            t.requires_grad_()
    torch.library.opcheck(getattr(torch.ops.grokcopy, op).default, inputs)


class _NormBlock(torch.nn.Module):
    """A pre-norm residual step shaped like a Llama block, using both ops."""

    def __init__(self, d):
        super().__init__()
        self.proj = torch.nn.Linear(d, d)
        self.w_attn = torch.nn.Parameter(1.0 + 0.1 * torch.randn(d))
        self.w_mlp = torch.nn.Parameter(1.0 + 0.1 * torch.randn(d))

    def forward(self, h, residual):
        h, residual = fused_add_rms_norm(h, residual, self.w_attn)
        return rms_norm(self.proj(h), self.w_mlp), residual


# torch.compile's inductor backend warns about a deprecated torch.jit API on its own internals.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_traces_without_graph_breaks():
    """fullgraph=True fails on any graph break; outputs and gradients must match eager."""
    torch.compiler.reset()
    block = _NormBlock(64).to(DEVICE)
    h, residual = make((2, 5, 64), torch.float32), make((2, 5, 64), torch.float32)
    compiled = torch.compile(block, fullgraph=True)

    out_eager = block(h, residual)
    grads_eager = torch.autograd.grad(out_eager[0].sum() + out_eager[1].square().sum(), list(block.parameters()))
    out_compiled = compiled(h, residual)
    grads_compiled = torch.autograd.grad(
        out_compiled[0].sum() + out_compiled[1].square().sum(), list(block.parameters())
    )
    for a, b in zip((*out_eager, *grads_eager), (*out_compiled, *grads_compiled), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.compiler.reset()


@pytest.mark.skipif(DEVICE != "cpu", reason="swaps the autotune list, which only the interpreter runs one by one")
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "fused"])
def test_every_gpu_launch_config_covers_every_row_once(monkeypatch, backward, with_residual):
    """The GPU's autotune lists, each config run alone under the interpreter with 3 stand-in SMs:
    every row is normalised once and every program's partial dweight is summed, whatever the tile
    (rows per tile), programs per SM and stages, for row counts that leave programs with no rows."""
    import importlib

    module = importlib.import_module("grokcopy.kernels.rms_norm")  # the attribute is the function

    monkeypatch.setattr(module, "_sm_count", lambda device: 3)
    fwd, bwd = module.rms_norm_fwd_kernel, module.BWD_KERNELS[backward]
    gpu_fwd, gpu_bwd = module.gpu_fwd_configs(), module.gpu_bwd_configs(backward == "streaming")
    for i, bwd_config in enumerate(gpu_bwd):
        fwd_config = gpu_fwd[i % len(gpu_fwd)]
        monkeypatch.setattr(fwd, "configs", [fwd_config])
        monkeypatch.setattr(bwd, "configs", [bwd_config])
        for shape in [(37, 768), (5, 4097), (2, 3)]:
            x = make(shape, torch.float32).requires_grad_()
            weight = make_weight(shape[-1], torch.float32).requires_grad_()
            dy = make(shape, torch.float32)
            x64, w64 = float64_leaf(x), float64_leaf(weight)
            if with_residual:
                res = make(shape, torch.float32).requires_grad_()
                y, _ = fused_add_rms_norm(x, res, weight, 1e-6)
                y64, _ = fused_add_rms_norm_reference(x64, float64_leaf(res), w64, 1e-6)
            else:
                y, y64 = rms_norm(x, weight, 1e-6), rms_norm_reference(x64, w64, 1e-6)
            dx, dweight = torch.autograd.grad(y, (x, weight), dy)
            dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
            label = f"{fwd_config} / {bwd_config}, shape {shape}"
            assert_rel_close(y, y64, TOL[torch.float32], f"y, {label}")
            assert_rel_close(dx, dx64, TOL[torch.float32], f"dx, {label}")
            assert_rel_close(dweight, dw64, TOL[torch.float32], f"dweight, {label}")
