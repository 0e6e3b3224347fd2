"""Every Triton op is a torch.library custom op that torch.compile captures whole (fullgraph=True, no
graph break) and differentiates through its registered backward, giving eager's numbers.

aot_eager runs the traced forward and backward graphs without inductor's code generation: that is
what checks the registration (fake implementations, autograd), and it runs under the interpreter."""

import pytest
import torch
from kernel_testing import DEVICE

from grokcopy import kernels
from grokcopy.evals.targets import induction_targets

B, H, T, D = 2, 2, 24, 16


def inputs_for(op: str) -> list[torch.Tensor]:
    def leaf(*shape, dtype=torch.float32):
        return torch.randn(shape, device=DEVICE).to(dtype).requires_grad_()

    if op == "rms_norm":
        return [leaf(T, 48), leaf(48)]
    if op == "fused_add_rms_norm":
        return [leaf(T, 48, dtype=torch.bfloat16), leaf(T, 48), leaf(48)]
    if op == "swiglu_packed":
        return [leaf(T, 64)]
    return [leaf(B, H, T, D), leaf(B, H // 2, T, D), leaf(B, H // 2, T, D)]


TARGETS = induction_targets(torch.randint(0, 5, (B, T), device=DEVICE))
OPS = {
    "rms_norm": lambda x, w: kernels.rms_norm(x, w, 1e-6, out_dtype=torch.bfloat16),
    "fused_add_rms_norm": lambda x, r, w: kernels.fused_add_rms_norm(x, r, w, 1e-6, out_dtype=torch.bfloat16),
    "swiglu_packed": kernels.swiglu_packed,
    "flash_attention": kernels.flash_attention,
    "flash_attention_with_stats": lambda q, k, v: kernels.flash_attention_with_stats(q, k, v, TARGETS),
}


def outputs(result) -> list[torch.Tensor]:
    flat = result if isinstance(result, tuple) else (result,)
    return [t for item in flat for t in (item if isinstance(item, tuple) else (item,))]


@pytest.mark.parametrize("op", list(OPS))
def test_fullgraph_compile_matches_eager(op):
    torch._dynamo.reset()
    fn = OPS[op]
    eager_in = inputs_for(op)
    compiled_in = [t.detach().clone().requires_grad_() for t in eager_in]
    eager_out = outputs(fn(*eager_in))
    compiled_out = outputs(torch.compile(fn, fullgraph=True, backend="aot_eager")(*compiled_in))
    for a, b in zip(eager_out, compiled_out, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    differentiable = [i for i, t in enumerate(eager_out) if t.requires_grad]
    assert differentiable, "the op's main output must carry a gradient"
    grads = [torch.randn_like(eager_out[i]) for i in differentiable]
    torch.autograd.backward([eager_out[i] for i in differentiable], grads)
    torch.autograd.backward([compiled_out[i] for i in differentiable], grads)
    for a, b in zip(eager_in, compiled_in, strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)



def fp64_float_args(to_kernel_arg):
    """The interpreter's argument conversion, changed to pass every Python float to a kernel as an fp64
    scalar: what inductor does with the float arguments of a user Triton kernel (the H100 crash of
    2026-11-25: an fp64 softmax_scale made the online-softmax state fp64 and tl.dot refused the fp64
    accumulator). The interpreter otherwise hands the kernel a Python float, which Triton treats as fp32."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    def convert(arg):
        if isinstance(arg, float):
            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float64), tl.float64), tl.float64)
        return to_kernel_arg(arg)

    return convert


@pytest.mark.skipif(DEVICE != "cpu", reason="swaps the interpreter's argument conversion")
@pytest.mark.parametrize("op", list(OPS))
def test_float_scalars_are_fp32_inside_the_kernels(op):
    """Each kernel casts its float scalars (eps, softmax_scale) to fp32 first, so fp64 scalars give the
    fp32 bits, forward and backward: no fp64 statistics, accumulators or bitcasts downstream."""
    from triton.runtime import interpreter

    fn = OPS[op]
    fp32_in = inputs_for(op)
    fp64_in = [t.detach().clone().requires_grad_() for t in fp32_in]
    fp32_out = outputs(fn(*fp32_in))
    grads = [torch.randn_like(t) for t in fp32_out if t.requires_grad]
    torch.autograd.backward([t for t in fp32_out if t.requires_grad], grads)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interpreter, "_implicit_cvt", fp64_float_args(interpreter._implicit_cvt))
        fp64_out = outputs(fn(*fp64_in))
        torch.autograd.backward([t for t in fp64_out if t.requires_grad], grads)
    for a, b in zip(fp32_out, fp64_out, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    for a, b in zip(fp32_in, fp64_in, strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)
