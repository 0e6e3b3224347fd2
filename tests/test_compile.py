"""torch.compile over the Triton ops. Under the interpreter every op is a custom op that torch.compile
captures whole (fullgraph=True, no graph break) and differentiates through its registered backward,
giving eager's numbers; aot_eager runs the traced graphs without inductor's code generation, which
checks the registration (fake implementations, autograd). On a GPU the ops are triton_ops that
torch.compile traces into (kernels/_common.py kernel_op): checked here in a child process with the
interpreter off, and the kernels' float scalars are fp32 whatever type inductor passes them as."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_testing import DEVICE

from grokcopy import kernels
from grokcopy.evals.targets import induction_targets

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.mark.slow  # inductor writes and compiles C++ for the torch ops: 39 s of CPU with a cold cache, 17 s warm
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor's own use of a deprecated torch.jit API
def test_compiled_llama_on_every_triton_backend_matches_eager():
    """`--compile` with attention, norm and MLP all on Triton: a 2-layer Llama (the second without
    RoPE, as tiny's last) under bf16 autocast, compiled by inductor, forward and backward, gives
    eager's loss and gradients. Under the interpreter the kernels are opaque ops in inductor's graph
    (kernels/_common.py kernel_op); inductor compiles the rest (RoPE, residual adds, the loss)."""
    from grokcopy.model import Llama, LlamaConfig

    torch._dynamo.reset()
    shape = dict(vocab_size=61, n_layers=2, n_heads=4, n_kv_heads=2, d_model=64, d_mlp=128, context=32, nope_every=2)
    model = Llama(LlamaConfig(**shape, attention="triton", norm="triton", mlp="triton")).to(DEVICE)
    idx = torch.randint(0, shape["vocab_size"], (2, 17), device=DEVICE)

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            logits = fn(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    eager_loss, eager_grads = loss_and_grads(model)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model, backend="inductor", fullgraph=True))
    # inductor fuses the torch ops around the kernels in another order than eager: bf16-level agreement
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-3, atol=0)
    for name, grad in eager_grads.items():
        err = ((compiled_grads[name] - grad).norm() / grad.norm()).item()
        assert err < 2e-2, f"{name}: gradient relative error {err:.2e}"
    torch._dynamo.reset()


CHILD_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
TRACE_ON_THE_GPU_PATH = """
import re
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from bench.static_sm90 import compile_only
from grokcopy import kernels
from grokcopy.evals.targets import induction_targets
from grokcopy.model import backends
from grokcopy.model.llama import rope_tables

graphs = []
capture = aot_autograd(fw_compiler=lambda gm, _: graphs.append(gm.code) or gm,
                       bw_compiler=lambda gm, _: graphs.append(gm.code) or gm)
leaf = lambda *shape, dtype=torch.bfloat16: torch.randn(shape).to(dtype).requires_grad_()
x, residual, w = leaf(8, 64), leaf(8, 64, dtype=torch.float32), leaf(64)
gate_up, gate, up = leaf(8, 96), leaf(8, 48), leaf(8, 48)
q, k, v = leaf(1, 2, 32, 64), leaf(1, 1, 32, 64), leaf(1, 1, 32, 64)
targets = induction_targets(torch.randint(0, 5, (1, 32)))
cos, sin = rope_tables(32, 64, 10000.0, "cpu")
hidden, lm_head = leaf(1, 8, 64), leaf(40, 64)  # --loss triton: the LM head and its loss fused
tokens = torch.randint(0, 40, (1, 8)).masked_fill(torch.arange(8) % 3 == 0, -100)

def step(x, residual, w, gate_up, gate, up, q, k, v, hidden, lm_head):
    y, new_residual = kernels.fused_add_rms_norm(x, residual, w, 1e-6, out_dtype=torch.bfloat16)
    # RoPE as attention="triton" applies it: on [B, T, H, D] views of q and k, before the attention
    q_rot, k_rot = backends.rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin, "triton")
    q_rot, k_rot = q_rot.transpose(1, 2), k_rot.transpose(1, 2)
    out = kernels.flash_attention_with_stats(q_rot, k_rot, v, targets)[0] + kernels.flash_attention(q, k, v)
    return (kernels.rms_norm(new_residual, w).sum() + y.sum() + kernels.swiglu_packed(gate_up).sum()
            + kernels.swiglu(gate, up).sum() + out.sum() + backends.loss(hidden, lm_head, tokens, "triton"))

with compile_only([], compile=False):  # launches compile nothing: only the trace is under test
    torch.compile(step, backend=capture, fullgraph=True)(x, residual, w, gate_up, gate, up, q, k, v, hidden,
                                                         lm_head).backward()
code = "\\n".join(graphs)
print("opaque:", code.count("torch.ops.grokcopy"), "kernels:", code.count("triton_kernel_wrapper_functional("))
launched = [kernel_side_table.get_kernel(int(i)) for i in re.findall(r"wrapper_functional\\(kernel_idx = (\\d+)", code)]
print(*sorted(getattr(kernel, "base_fn", kernel).__name__ for kernel in launched))  # base_fn: an autotuned one's
"""


def test_compile_traces_into_the_kernels_on_the_gpu_path():
    """Without the interpreter (a GPU's path) the ops are triton_ops: torch.compile's graphs hold the
    Triton kernels themselves, forward and backward, and no opaque grokcopy op; the step includes
    triton RoPE (attention="triton") and the fused loss (--loss triton) as the model calls them. Checked on the CPU
    in a child process with the interpreter off, the stand-in sm_90 driver of bench/static_sm90.py
    and launches that compile nothing; what inductor then generates needs a GPU to run."""
    proc = subprocess.run([sys.executable, "-c", TRACE_ON_THE_GPU_PATH], cwd=ROOT, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # forward: 2 norms, 2 attention forwards, 2 SwiGLUs, RoPE, the loss's one chunk = 8 launches;
    # backward: 2 norm backwards with a dweight reduction each, 2 attention backwards of 3 kernels
    # each, 2 SwiGLU backwards, RoPE's inverse rotation (the loss's gradients come from its forward)
    counts, names = proc.stdout.splitlines()[-2:]
    opaque, launches = (int(n) for n in counts.split()[1::2])
    assert opaque == 0 and launches == 8 + 2 * 2 + 2 * 3 + 2 + 1, proc.stdout
    names = names.split()
    assert names.count("rotary_kernel") == 2 and names.count("cross_entropy_rows_kernel") == 1, names
