"""swiglu and swiglu_packed against a float64 reference: values, gradients, errors, compile.

On CPU the kernels run under the Triton interpreter (tests/conftest.py), on a GPU machine for real.
"""

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DEVICE, assert_rel_close, float64_leaf, make

from grokcopy.kernels import swiglu, swiglu_packed
from grokcopy.kernels.swiglu import swiglu_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative-error bounds (‖out − ref‖ / ‖ref‖ against float64). The math is fp32 and each output
# is rounded to its dtype once: measured ~2e-3 in bf16 (unit roundoff u = 2^-8) and ~2e-4 in fp16
# (u = 2^-11). The bounds are one machine epsilon, 2u, for the half types; fp32 measures ~6e-8 and
# gets 1e-5.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}

# (shape of gate/up/out, gate layout, up layout, scale of gate). A handful of rows each keeps the
# interpreter fast.
CASES = [
    pytest.param((4, 1), "contiguous", "contiguous", 1.0, id="I1"),
    pytest.param((4, 3), "contiguous", "contiguous", 1.0, id="I3"),
    pytest.param((4, 127), "contiguous", "contiguous", 1.0, id="I127"),
    pytest.param((4, 768), "contiguous", "contiguous", 1.0, id="I768"),
    pytest.param((4, 1000), "contiguous", "contiguous", 1.0, id="I1000"),
    # 4097 columns span five column blocks, the last holding a single column.
    pytest.param((3, 4097), "contiguous", "contiguous", 1.0, id="I4097"),
    # 3 row blocks x 3 column blocks, the last of each partial: the 1-D grid's (row, column) split
    pytest.param((9, 2100), "contiguous", "contiguous", 1.0, id="row-and-column-blocks"),
    pytest.param((1, 768), "contiguous", "contiguous", 1.0, id="single-row"),
    pytest.param((2, 3, 1000), "contiguous", "contiguous", 1.0, id="3d"),
    # 2600 rows of 3: several row blocks, the last partly masked.
    pytest.param((2, 1300, 3), "contiguous", "contiguous", 1.0, id="many-rows-I3"),
    pytest.param((6, 127), "transposed", "transposed", 1.0, id="transposed"),
    pytest.param((2, 3, 768), "sliced", "sliced", 1.0, id="sliced"),
    # gate and up with different strides: each has its own row stride in the kernel.
    pytest.param((5, 127), "contiguous", "sliced", 1.0, id="mixed-layouts"),
    # |gate| up to ~100: sigmoid saturates, exp(-gate) overflows fp32 to inf for large negative gate.
    pytest.param((4, 1000), "contiguous", "contiguous", 30.0, id="saturating"),
]


# The saturating case overflows exp(-gate) to inf on purpose; the interpreter (numpy) warns.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,gate_layout,up_layout,scale", CASES)
def test_swiglu_matches_float64_reference(poisoned_empty, shape, gate_layout, up_layout, scale, dtype):
    gate = make(shape, dtype, gate_layout, scale).requires_grad_()
    up = make(shape, dtype, up_layout).requires_grad_()
    dout = make(shape, dtype, gate_layout)

    out = swiglu(gate, up)
    dgate, dup = torch.autograd.grad(out, (gate, up), dout)
    assert poisoned_empty.count(tuple(shape)) >= 3  # out, dgate, dup

    gate64, up64 = float64_leaf(gate), float64_leaf(up)
    out64 = swiglu_reference(gate64, up64)
    dgate64, dup64 = torch.autograd.grad(out64, (gate64, up64), dout.double())
    tol = TOL[dtype]
    assert out.dtype == dgate.dtype == dup.dtype == dtype
    assert_rel_close(out, out64, tol, "out")
    assert_rel_close(dgate, dgate64, tol, "dgate")
    assert_rel_close(dup, dup64, tol, "dup")


# The saturating case overflows exp(-gate) to inf on purpose; the interpreter (numpy) warns.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout,_,scale", CASES)
def test_swiglu_packed_matches_float64_reference(poisoned_empty, shape, layout, _, scale, dtype):
    packed_shape = (*shape[:-1], 2 * shape[-1])
    gate_up = make(packed_shape, dtype, layout)
    with torch.no_grad():
        gate_up[..., : shape[-1]] *= scale
    gate_up.requires_grad_()
    dout = make(shape, dtype, layout)

    out = swiglu_packed(gate_up)
    (d_gate_up,) = torch.autograd.grad(out, gate_up, dout)
    assert tuple(shape) in poisoned_empty and tuple(packed_shape) in poisoned_empty  # out, d_gate_up

    gate_up64 = float64_leaf(gate_up)
    out64 = swiglu_reference(*gate_up64.chunk(2, dim=-1))
    (d_gate_up64,) = torch.autograd.grad(out64, gate_up64, dout.double())
    tol = TOL[dtype]
    assert out.dtype == d_gate_up.dtype == dtype
    assert_rel_close(out, out64, tol, "out")
    # Each half separately: a swapped or misplaced half would hide in the norm of the whole.
    for name, half, half64 in zip(("dgate", "dup"), d_gate_up.chunk(2, -1), d_gate_up64.chunk(2, -1), strict=True):
        assert_rel_close(half, half64, tol, name)


def test_packed_and_separate_agree_exactly():
    """The two entry points run the same kernels on the same values: results are bit-identical."""
    gate, up = make((6, 300), torch.bfloat16), make((6, 300), torch.bfloat16)
    assert torch.equal(swiglu(gate, up), swiglu_packed(torch.cat([gate, up], dim=-1)))


def test_bf16_rounds_once_to_nearest():
    """bf16 output equals the fp32 result rounded to nearest: one rounding, no truncation."""
    gate, up = make((8, 1000), torch.bfloat16), make((8, 1000), torch.bfloat16)
    out = swiglu(gate, up)
    expected = (F.silu(gate.float()) * up.float()).bfloat16()
    mismatch = (out != expected).float().mean().item()
    # exp on a GPU differs from torch's in the last fp32 bits, which can tip a rare rounding.
    assert mismatch < 0.01, f"{mismatch:.1%} of elements differ from a single round-to-nearest"


def test_zero_rows():
    gate_up = make((0, 64), torch.float32).requires_grad_()
    out = swiglu_packed(gate_up)
    (grad,) = torch.autograd.grad(out, gate_up, torch.ones_like(out))
    assert out.shape == (0, 32) and grad.shape == (0, 64)


def t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(shape, device=device).to(dtype)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: swiglu(t(2, 8, dtype=torch.float64), t(2, 8, dtype=torch.float64)), TypeError, r"swiglu.*float64"),
        (lambda: swiglu(t(2, 8), t(2, 8, dtype=torch.bfloat16)), TypeError, r"swiglu\(gate, up\).*argument 1"),
        (lambda: swiglu_packed(t(2, 8, dtype=torch.int32)), TypeError, r"swiglu_packed.*int32"),
        (lambda: swiglu(t(2, 8), t(2, 9)), ValueError, r"swiglu: gate has shape \(2, 8\) but up has \(2, 9\)"),
        (lambda: swiglu(t(2, 0), t(2, 0)), ValueError, r"swiglu: .*non-empty last dimension"),
        (lambda: swiglu_packed(t(2, 7)), ValueError, r"swiglu_packed: .*must be even"),
        (lambda: swiglu_packed(t(2, 0)), ValueError, r"swiglu_packed: .*must be even and non-zero"),
        (lambda: swiglu(t(2, 8), t(2, 8, device="meta")), ValueError, r"swiglu\(gate, up\).*argument 1 is on meta"),
    ],
    ids=["float64", "up-dtype", "integer", "shape-mismatch", "empty-row", "odd-width", "zero-width", "device"],
)
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "op,args,differentiable",
    [
        ("swiglu", lambda: (make((3, 40), torch.float32), make((3, 40), torch.float32)), True),
        ("swiglu_packed", lambda: (make((3, 80), torch.float32),), True),
        ("swiglu_backward", lambda: tuple(make((3, 40), torch.float32) for _ in range(3)), False),
        ("swiglu_packed_backward", lambda: (make((3, 40), torch.float32), make((3, 80), torch.float32)), False),
    ],
)
def test_opcheck(op, args, differentiable):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch agree with eager."""
    inputs = args()
    if differentiable:
        for x in inputs:
            x.requires_grad_()
    torch.library.opcheck(getattr(torch.ops.grokcopy, op).default, inputs)


class _MLP(torch.nn.Module):
    """A Llama MLP in both forms: one packed gate/up projection, and two separate ones."""

    def __init__(self, d, hidden):
        super().__init__()
        self.gate_up = torch.nn.Linear(d, 2 * hidden, bias=False)
        self.gate, self.up = torch.nn.Linear(d, hidden, bias=False), torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(swiglu_packed(self.gate_up(x)) + swiglu(self.gate(x), self.up(x)))


# torch.compile's inductor backend warns about a deprecated torch.jit API on its own internals.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_traces_without_graph_breaks():
    """fullgraph=True fails on any graph break; outputs and gradients must match eager."""
    torch.compiler.reset()
    mlp = _MLP(32, 48).to(DEVICE)
    x = make((2, 5, 32), torch.float32)
    compiled = torch.compile(mlp, fullgraph=True)

    out_eager = mlp(x)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), list(mlp.parameters()))
    out_compiled = compiled(x)
    grads_compiled = torch.autograd.grad(out_compiled.square().sum(), list(mlp.parameters()))
    for a, b in zip((out_eager, *grads_eager), (out_compiled, *grads_compiled), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.compiler.reset()
