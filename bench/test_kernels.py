"""RMSNorm, fused add + RMSNorm and SwiGLU: our Triton kernels against their peers, in one run.

Run on a GPU machine:
    python -m pytest bench/test_kernels.py --benchmark-json bench/results/kernels-<machine>.json
    (add `-k "swiglu and fwd_bwd"` and the like to narrow it; --benchmark-group-by=param:op,param:shape,param:pass_
    lines the four providers of a case up side by side).

Each case is (op, shape, pass, provider) in bf16 at Llama shapes (tokens x model or MLP width):
pass is fwd, bwd (backward alone, forward done once outside the timing) or fwd_bwd; provider is
triton (kernels/), torch (the eager plain-torch reference), compile (torch.compile of that
reference) or liger (Liger-Kernel, when it is installed). benchmark.extra_info gets the median time
from triton.testing.do_bench, the achieved GB/s over the fewest bytes the pass must move (see
`bytes_moved`) and its fraction of this GPU's copy bandwidth measured in the same session; the
triton case also records its speedup over each peer measured in the same run.
Without CUDA everything is skipped ("needs CUDA"); the module imports without it.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from triton.testing import do_bench

from grokcopy.kernels import flash_attention, fused_add_rms_norm, rms_norm, swiglu, swiglu_packed
from grokcopy.kernels.rms_norm import fused_add_rms_norm_reference, rms_norm_reference
from grokcopy.kernels.swiglu import swiglu_reference

DTYPE = torch.bfloat16
EPS = 1e-6
# (tokens, width): width is the model dimension for the norms and the MLP (intermediate) width I
# for SwiGLU; tokens = batch x sequence. One short-and-wide and one long-and-narrow case per op.
SHAPES = {
    "rms_norm": [(4096, 4096), (65536, 768)],
    "fused_add_rms_norm": [(4096, 4096), (65536, 768)],
    "swiglu": [(4096, 11008), (65536, 3072)],
    "swiglu_packed": [(4096, 11008), (65536, 3072)],
}
CASES = [pytest.param(op, shape, id=f"{op}-{shape[0]}x{shape[1]}") for op, shapes in SHAPES.items() for shape in shapes]
PASSES = ["fwd", "bwd", "fwd_bwd"]
PROVIDERS = ["triton", "torch", "compile", "liger"]
PEERS = [p for p in PROVIDERS if p != "triton"]
# Soft goal for the triton provider, recorded as goal_met in extra_info and not asserted: it has
# not yet been validated on a GPU (the session that wrote these kernels had none).
GOAL_SPEEDUP_VS_COMPILE = 0.9

OURS = {
    "rms_norm": lambda x, w: rms_norm(x, w, EPS),
    "fused_add_rms_norm": lambda x, r, w: fused_add_rms_norm(x, r, w, EPS),
    "swiglu": swiglu,
    "swiglu_packed": swiglu_packed,
}
REFERENCES = {
    "rms_norm": lambda x, w: rms_norm_reference(x, w, EPS),
    "fused_add_rms_norm": lambda x, r, w: fused_add_rms_norm_reference(x, r, w, EPS),
    "swiglu": swiglu_reference,
    "swiglu_packed": lambda gate_up: swiglu_reference(*gate_up.chunk(2, dim=-1)),
}


@functools.cache
def compiled_reference(op: str):
    """torch.compile of the reference, one per op; dynamic=False specialises on each shape."""
    return torch.compile(REFERENCES[op], dynamic=False)


def make_inputs(op: str, shape: tuple[int, int], device) -> list[torch.Tensor]:
    tokens, width = shape

    def randn(*s):
        return torch.randn(s, device=device, dtype=DTYPE).requires_grad_()

    if op == "rms_norm":
        return [randn(tokens, width), randn(width)]
    if op == "fused_add_rms_norm":
        return [randn(tokens, width), randn(tokens, width), randn(width)]
    if op == "swiglu":
        return [randn(tokens, width), randn(tokens, width)]
    return [randn(tokens, 2 * width)]


def bytes_moved(op: str, shape: tuple[int, int], pass_: str) -> int:
    """Fewest bytes a pass must move: each input read once, each output written once.

    rms_norm      fwd: read x, w; write y                       bwd: read dy, x, w; write dx, dw
    fused_add     fwd: read x, r, w; write y, s                 bwd: read dy, ds, s, w; write one
                  gradient shared by x and r (they are equal), and dw
    swiglu(_packed) fwd: read gate, up; write out               bwd: read dout, gate, up; write
                  dgate, dup
    fwd_bwd is the sum: the backward cannot avoid reading its inputs again.
    """
    tokens, width = shape
    rows = tokens * width
    fwd, bwd = {
        "rms_norm": (2 * rows + width, 3 * rows + 2 * width),
        "fused_add_rms_norm": (4 * rows + width, 4 * rows + 2 * width),
        "swiglu": (3 * rows, 5 * rows),
        "swiglu_packed": (3 * rows, 5 * rows),
    }[op]
    elements = {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[pass_]
    return elements * torch.finfo(DTYPE).bits // 8


def liger_forward(op: str, inputs: list[torch.Tensor]):
    """(forward, tensors to differentiate) with Liger-Kernel, or a skip when it is not installed."""
    pytest.importorskip("liger_kernel")
    if op == "rms_norm":
        from liger_kernel.transformers.rms_norm import LigerRMSNorm

        x, w = inputs
        # in_place=False: Liger's default overwrites dy with dx, which a repeated backward must not.
        norm = LigerRMSNorm(w.shape[0], eps=EPS, in_place=False).to(w.device, w.dtype)
        return (lambda: norm(x)), [x, norm.weight]
    if op == "fused_add_rms_norm":
        try:
            from liger_kernel.transformers.fused_add_rms_norm import LigerFusedAddRMSNorm
        except ImportError:
            pytest.skip("this Liger-Kernel version has no fused add + RMSNorm")
        x, r, w = inputs
        norm = LigerFusedAddRMSNorm(w.shape[0], eps=EPS).to(w.device, w.dtype)
        return (lambda: norm(x, r)), [x, r, norm.weight]
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    if op == "swiglu":
        return (lambda: LigerSiLUMulFunction.apply(*inputs)), inputs
    # Liger has no packed form: it gets the two halves as views (and copies them to contiguous).
    return (lambda: LigerSiLUMulFunction.apply(*inputs[0].chunk(2, dim=-1))), inputs


def provider_forward(op: str, provider: str, inputs: list[torch.Tensor]):
    """(forward: () -> outputs, tensors to differentiate) for one provider."""
    if provider == "liger":
        return liger_forward(op, inputs)
    fn = {"triton": OURS[op], "torch": REFERENCES[op], "compile": compiled_reference(op)}[provider]
    return (lambda: fn(*inputs)), inputs


def timed_callable(forward, grad_inputs: list[torch.Tensor], pass_: str):
    """The callable to time for `pass_`. Backward uses autograd.grad so that .grad never accumulates."""
    outputs = forward()
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    grad_outputs = [torch.randn_like(o) for o in outputs]
    if pass_ == "fwd":
        return forward
    if pass_ == "bwd":
        return lambda: torch.autograd.grad(outputs, grad_inputs, grad_outputs, retain_graph=True)

    def fwd_bwd():
        out = forward()
        torch.autograd.grad(out if isinstance(out, tuple) else (out,), grad_inputs, grad_outputs)

    return fwd_bwd


# Medians measured in this run, keyed by (op, shape, pass, provider): the triton case compares
# against its peers whichever order the cases run in.
_measured_ms: dict[tuple, float] = {}


def peer_ms(op, shape, pass_, provider, device) -> float | None:
    """A peer's median from this run, measured now if its own case has not run yet."""
    key = (op, shape, pass_, provider)
    if key not in _measured_ms:
        try:
            forward, grad_inputs = provider_forward(op, provider, make_inputs(op, shape, device))
        except pytest.skip.Exception:
            return None
        _measured_ms[key] = do_bench(timed_callable(forward, grad_inputs, pass_), return_mode="median")
    return _measured_ms[key]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("op,shape", CASES)
def test_kernel_throughput(op, shape, pass_, provider, measure, benchmark, cuda_device):
    forward, grad_inputs = provider_forward(op, provider, make_inputs(op, shape, cuda_device))
    fn = timed_callable(forward, grad_inputs, pass_)
    ms = measure(fn, bytes_moved(op, shape, pass_), op=op, shape=list(shape), pass_=pass_, provider=provider)
    _measured_ms[(op, shape, pass_, provider)] = ms
    if provider != "triton":
        return

    speedups = {}
    for peer in PEERS:
        other = peer_ms(op, shape, pass_, peer, cuda_device)
        if other is not None:
            speedups[peer] = other / ms
            benchmark.extra_info[f"speedup_vs_{peer}"] = speedups[peer]
    benchmark.extra_info["goal"] = f"speedup_vs_compile >= {GOAL_SPEEDUP_VS_COMPILE}"
    benchmark.extra_info["goal_met"] = speedups.get("compile", 0.0) >= GOAL_SPEEDUP_VS_COMPILE
    # Asserted although not yet run on a GPU: the eager reference moves several times the bytes
    # (fp32 temporaries, one kernel per op), so losing to it means a broken launch, not a tuning
    # question.
    assert speedups["torch"] > 1.0, f"{op} {pass_} {shape}: slower than eager torch ({speedups['torch']:.2f}x)"


# ----------------------------------------------------------------------------------------------
# Host overhead: eager calls per second through each op on a tiny tensor, where the kernel costs
# next to nothing and the host work (op dispatch, autograd, argument checks, allocations, the
# autotuner's lookup) is the whole call, next to plain torch ops on the same tensors.
#     python -m pytest bench/test_kernels.py -k host --benchmark-columns=mean,ops
# On a GPU the launches are real. On a CPU (TRITON_INTERPRET unset) the compiled launch is stubbed
# after the autotuner (bench/static_sm90.py's stand-in sm_90 driver, one config per kernel), so the
# figure is our op layer's own cost, without Triton's C launcher.

HOST_ROWS, HOST_WIDTH = 4, 64
HOST_CASES = {
    "torch-mul": lambda t: lambda: t["x"] * t["w"],
    "torch-rms_norm": lambda t: lambda: torch.nn.functional.rms_norm(t["x"], (HOST_WIDTH,), t["w"], EPS),
    "rms_norm": lambda t: lambda: rms_norm(t["x"], t["w"], EPS),
    "fused_add_rms_norm": lambda t: lambda: fused_add_rms_norm(t["x"], t["r"], t["w"], EPS),
    "swiglu_packed": lambda t: lambda: swiglu_packed(t["gate_up"]),
    "flash_attention": lambda t: lambda: flash_attention(t["q"], t["q"], t["q"]),
    "torch-rms_norm-fwd_bwd": lambda t: lambda: torch.nn.functional.rms_norm(
        t["xg"], (HOST_WIDTH,), t["wg"], EPS).sum().backward(),
    "rms_norm-fwd_bwd": lambda t: lambda: rms_norm(t["xg"], t["wg"], EPS).sum().backward(),
}


@pytest.fixture(scope="module")
def host_tensors():
    if torch.cuda.is_available():
        device, stub = torch.device("cuda"), contextlib.nullcontext()
    else:
        from grokcopy.kernels._common import interpreting

        if interpreting():
            pytest.skip("the interpreter runs the kernels in Python: unset TRITON_INTERPRET")
        device, stub = torch.device("cpu"), stubbed_launches()
    with stub:
        x = torch.randn(HOST_ROWS, HOST_WIDTH, device=device)
        yield {"x": x, "w": torch.ones(HOST_WIDTH, device=device), "r": torch.randn_like(x),
               "gate_up": torch.randn(HOST_ROWS, 2 * HOST_WIDTH, device=device),
               "q": torch.randn(1, 2, 16, 16, device=device), "xg": x.clone().requires_grad_(),
               "wg": torch.ones(HOST_WIDTH, device=device, requires_grad=True)}


@contextlib.contextmanager
def stubbed_launches():
    """CPU only: kernels 'launch' as a no-op after the autotuner has picked their config."""
    import importlib

    from triton.runtime import autotuner, driver, jit

    from bench.static_sm90 import StandInDriver

    modules = [importlib.import_module(f"grokcopy.kernels.{n}") for n in ("rms_norm", "swiglu", "flash_attention")]
    tuned = [k for m in modules for v in vars(m).values() for k in (v.values() if isinstance(v, dict) else [v])
             if isinstance(k, autotuner.Autotuner)]
    saved = jit.JITFunction.run, driver._active, {m: m.check_inputs for m in modules}, {k: k.configs for k in tuned}
    driver.set_active(StandInDriver())
    jit.JITFunction.run = lambda self, *args, **kwargs: None
    for module in modules:
        module.check_inputs = lambda *args, **kwargs: None  # CPU tensors by design
    for kernel in tuned:  # one config each: nothing to benchmark without a GPU
        kernel.configs = kernel.configs[:1]
    try:
        yield
    finally:
        jit.JITFunction.run, driver._active = saved[0], saved[1]
        for module, check in saved[2].items():
            module.check_inputs = check
        for kernel, configs in saved[3].items():
            kernel.configs = configs


@pytest.mark.parametrize("case", list(HOST_CASES))
def test_host_calls_per_second(case, host_tensors, benchmark):
    benchmark.extra_info.update(case=case, device=str(host_tensors["x"].device), rows=HOST_ROWS, width=HOST_WIDTH,
                                launches="real" if host_tensors["x"].is_cuda else "stubbed")
    benchmark(HOST_CASES[case](host_tensors))
