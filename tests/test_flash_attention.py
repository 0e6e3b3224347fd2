"""FlashAttention forward/backward against a float64 materialised reference (CPU: Triton interpreter).

The interpreter runs the kernels with BLOCK_M=32 / BLOCK_N=16 tiles (see kernels/flash_attention.py),
so T = 17, 129, 300 give partial tiles and many tiles per row, and T = 1 a single padded tile.
"""

import math

import pytest
import torch

from grokcopy.kernels import (
    attention_reference,
    flash_attention,
    flash_attention_backward,
    flash_attention_forward,
)

# CPU runs the kernels through the Triton interpreter (tests/conftest.py); a GPU machine compiles them.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (atol, rtol) per dtype. fp32 runs exact fp32 products (interpreter; "ieee" dots on a GPU), so only
# summation order and exp2 rounding separate it from float64: errors ~1e-7..1e-6 seen; 1e-5 allowed
# (5e-5 for gradients, which sum over up to 300 rows). fp16/bf16 results are rounded once to 11/8
# significant bits, at most 2^-11 = 4.9e-4 / 2^-8 = 3.9e-3 relative (`cast_rne` makes the interpreter
# round like a GPU); a GPU also rounds P and dS to the dot dtype before the products. Allowed near
# |x| = 1: atol + rtol = 4e-3, about 4 fp16 ulps, and 2e-2, about 2.5 bf16 ulps; twice that for
# gradients. Seen under the interpreter: at most 5% (fp32), 16% (fp16), 22% (bf16) of each bound.
TOL = {
    torch.float32: {"out": (1e-5, 1e-5), "grad": (5e-5, 5e-5)},
    torch.float16: {"out": (2e-3, 2e-3), "grad": (4e-3, 4e-3)},
    torch.bfloat16: {"out": (1e-2, 1e-2), "grad": (2e-2, 2e-2)},
}


def make_qkv(B, Hq, Hkv, T, S, D, dtype, layout="contiguous"):
    """Fresh random q [B,Hq,T,D], k/v [B,Hkv,S,D] (leaf tensors) in one of three memory layouts.

    contiguous:  [B, H, T, D] memory.
    token_major: x.view(B, T, H, D).transpose(1, 2), as the model passes them (dense, not contiguous).
    packed:      q/k/v slices of one [B, T, Hq + 2 Hkv, D] projection (not even dense).
    """
    if layout == "packed":
        assert T == S
        qkv = torch.randn(B, T, Hq + 2 * Hkv, D, device=DEVICE).to(dtype)
        q, k, v = qkv.split([Hq, Hkv, Hkv], dim=2)
        return [t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v)]
    shapes = [(B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D)]
    tensors = []
    for shape in shapes:
        if layout == "token_major":
            t = torch.randn(shape[0], shape[2], shape[1], shape[3], device=DEVICE).to(dtype).transpose(1, 2)
        else:
            t = torch.randn(shape, device=DEVICE).to(dtype)
        tensors.append(t.requires_grad_())
    return tensors


def reference_fwd_bwd(q, k, v, dout, causal, softmax_scale=None):
    """float64 reference output and gradients for the same (rounded) inputs."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = attention_reference(q64, k64, v64, causal=causal, softmax_scale=softmax_scale)
    out.backward(dout.double())
    return out.detach(), q64.grad, k64.grad, v64.grad


def assert_close(actual, expected, tol, name):
    atol, rtol = tol
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# Each case covers at least one edge: T = 1, partial tiles, many tiles, D = 16/96/128, GQA and MQA,
# T < S and T > S (causal rows that see no key), batch 2, every layout, and a custom softmax scale.
CASES = [
    # B, Hq, Hkv, T, S, D, causal, dtype, layout, scale
    (1, 2, 2, 1, 1, 32, True, torch.float32, "contiguous", None),
    (2, 2, 2, 17, 17, 32, True, torch.float32, "token_major", None),
    (1, 4, 2, 128, 128, 64, True, torch.float16, "token_major", None),
    (1, 4, 2, 129, 129, 64, False, torch.bfloat16, "contiguous", None),
    (1, 2, 1, 300, 300, 128, True, torch.bfloat16, "token_major", None),
    (2, 2, 2, 17, 17, 96, False, torch.float16, "packed", None),
    (1, 4, 2, 17, 129, 64, True, torch.float32, "contiguous", 0.3),
    (1, 2, 1, 129, 17, 32, True, torch.float32, "token_major", None),
    (1, 2, 2, 129, 40, 128, False, torch.float16, "contiguous", None),
    (2, 4, 1, 1, 300, 64, True, torch.bfloat16, "contiguous", None),
    (1, 3, 3, 33, 33, 16, True, torch.float32, "packed", None),
]


@pytest.mark.parametrize(
    "B,Hq,Hkv,T,S,D,causal,dtype,layout,scale",
    CASES,
    ids=[f"B{c[0]}-H{c[1]}:{c[2]}-T{c[3]}-S{c[4]}-D{c[5]}-{'causal' if c[6] else 'full'}-"
         f"{str(c[7])[6:]}-{c[8]}" + ("-scaled" if c[9] else "") for c in CASES],
)
def test_forward_backward_match_reference(B, Hq, Hkv, T, S, D, causal, dtype, layout, scale):
    q, k, v = make_qkv(B, Hq, Hkv, T, S, D, dtype, layout)
    out = flash_attention(q, k, v, causal=causal, softmax_scale=scale)
    dout = torch.randn(B, Hq, T, D, device=DEVICE).to(dtype)
    out.backward(dout)
    ref_out, ref_dq, ref_dk, ref_dv = reference_fwd_bwd(q, k, v, dout, causal, scale)

    assert out.shape == (B, Hq, T, D) and out.dtype == dtype
    assert_close(out, ref_out, TOL[dtype]["out"], "out")
    assert_close(q.grad, ref_dq, TOL[dtype]["grad"], "dq")
    assert_close(k.grad, ref_dk, TOL[dtype]["grad"], "dk")
    assert_close(v.grad, ref_dv, TOL[dtype]["grad"], "dv")


def test_rows_without_visible_keys_are_zero():
    # Causal, T > S, bottom-right aligned: query i sees keys j <= i - (T - S); the first T - S see none.
    B, H, T, S, D = 1, 2, 40, 8, 32
    q, k, v = make_qkv(B, H, H, T, S, D, torch.float32)
    out = flash_attention(q, k, v, causal=True)
    out.sum().backward()
    assert torch.equal(out[:, :, : T - S], torch.zeros_like(out[:, :, : T - S]))
    assert torch.equal(q.grad[:, :, : T - S], torch.zeros_like(q.grad[:, :, : T - S]))
    # Query T - S sees exactly key 0, so its output is v[0].
    torch.testing.assert_close(out[:, :, T - S], v[:, :, 0].detach())


def test_output_layout_is_token_major_and_grads_follow_inputs():
    B, Hq, Hkv, T, D = 2, 4, 2, 17, 32
    q, k, v = make_qkv(B, Hq, Hkv, T, T, D, torch.float32, layout="token_major")
    out = flash_attention(q, k, v)
    # The model's `out.transpose(1, 2).reshape(B, T, Hq * D)` is then a free view.
    assert out.transpose(1, 2).is_contiguous()
    out.sum().backward()
    assert q.grad.stride() == q.stride() and k.grad.stride() == k.stride()


def nan_like(t):
    return torch.full_like(t, float("nan"))


@pytest.mark.parametrize("T,S,D,causal", [(129, 17, 32, True), (17, 129, 96, True), (33, 33, 64, False)])
def test_every_output_element_is_written(T, S, D, causal):
    """Pre-fill every output buffer with NaN: any element a kernel forgets to write stays NaN."""
    B, Hq, Hkv = 2, 4, 2
    q, k, v = (t.detach() for t in make_qkv(B, Hq, Hkv, T, S, D, torch.float32))
    out = torch.full((B, T, Hq, D), float("nan"), device=DEVICE).transpose(1, 2)
    lse = torch.full((B, Hq, T), float("nan"), device=DEVICE)
    out, lse, _, _ = flash_attention_forward(q, k, v, causal=causal, out=out, lse=lse)
    dout = torch.randn(B, Hq, T, D, device=DEVICE)
    dq, dk, dv = flash_attention_backward(dout, q, k, v, out, lse, causal=causal, dq=nan_like(q),
                                          dk=nan_like(k), dv=nan_like(v))
    ref_out, ref_dq, ref_dk, ref_dv = reference_fwd_bwd(q, k, v, dout, causal)
    for name, t in [("out", out), ("dq", dq), ("dk", dk), ("dv", dv)]:
        assert not t.isnan().any(), f"{name} has unwritten (NaN) elements"
    assert not lse.isnan().any()
    assert_close(out, ref_out, TOL[torch.float32]["out"], "out")
    assert_close(dq, ref_dq, TOL[torch.float32]["grad"], "dq")
    assert_close(dk, ref_dk, TOL[torch.float32]["grad"], "dk")
    assert_close(dv, ref_dv, TOL[torch.float32]["grad"], "dv")


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = make_qkv(1, 2, 2, 17, 17, 64, torch.float32)
    default = flash_attention(q, k, v, causal=False)
    explicit = flash_attention(q, k, v, causal=False, softmax_scale=1 / math.sqrt(64))
    other = flash_attention(q, k, v, causal=False, softmax_scale=0.5)
    torch.testing.assert_close(default, explicit, atol=0, rtol=0)
    assert not torch.allclose(default, other, atol=1e-3)


def _args(q=(1, 2, 8, 32), k=(1, 2, 8, 32), v=None, dtype=torch.float32, k_dtype=None, k_device=DEVICE):
    v = k if v is None else v
    return (torch.randn(q, dtype=dtype, device=DEVICE), torch.randn(k, dtype=k_dtype or dtype, device=k_device),
            torch.randn(v, dtype=dtype, device=DEVICE))


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        (_args(q=(2, 8, 32)), {}, ValueError, "q must be 4-D"),
        (_args(k=(1, 2, 8, 32), v=(1, 2, 9, 32)), {}, ValueError, "same shape"),
        (_args(k=(2, 2, 8, 32)), {}, ValueError, "agree on batch and head dim"),
        (_args(q=(1, 2, 8, 64)), {}, ValueError, "agree on batch and head dim"),
        (_args(q=(1, 3, 8, 32)), {}, ValueError, r"query heads \(3\) must be a multiple of key/value heads \(2\)"),
        (_args(q=(1, 2, 8, 48), k=(1, 2, 8, 48)), {}, ValueError, "head dim 48 is not supported"),
        (_args(q=(1, 2, 0, 32)), {}, ValueError, "empty input"),
        (_args(k_dtype=torch.float16), {}, TypeError, "argument 1 has dtype torch.float16"),
        (_args(dtype=torch.float64), {}, TypeError, "supported"),
        (_args(k_device="meta"), {}, ValueError, "argument 1 is on meta"),
        (_args(), {"softmax_scale": 0.0}, ValueError, "softmax_scale must be positive"),
    ],
    ids=["q-3d", "kv-shape", "batch", "head-dim-mismatch", "gqa-ratio", "head-dim-48", "empty",
         "dtype-mismatch", "float64", "device-mismatch", "scale"],
)
def test_bad_inputs_raise_clear_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        flash_attention(*args, **kwargs)


@pytest.mark.parametrize("with_targets", [False, True], ids=["plain", "stats"])
def test_opcheck(with_targets):
    """The custom ops' schemas, fake implementations (shapes and token-major strides), autograd
    registration and AOT dispatch agree with eager: what torch.compile relies on."""
    q, k, v = make_qkv(1, 4, 2, 33, 33, 16, torch.float32)
    targets = torch.randint(-1, 33, (1, 33, 2), device=DEVICE) if with_targets else None
    torch.library.opcheck(torch.ops.grokcopy.flash_attention_fwd.default, (q, k, v, targets, True, None, with_targets))
    out = flash_attention(q, k, v).detach()
    lse = torch.ops.grokcopy.flash_attention_fwd(q, k, v, None, True, None, False)[1]
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.grokcopy.flash_attention_bwd.default,
                          (dout, q.detach(), k.detach(), v.detach(), out, lse, True, None))


@pytest.mark.parametrize(
    "B,Hq,Hkv,T,S,D,causal,dtype,layout,scale", CASES,
    ids=[f"T{c[3]}-S{c[4]}-D{c[5]}-{'causal' if c[6] else 'full'}-{str(c[7])[6:]}-{c[8]}" for c in CASES],
)
def test_tma_forward_equals_pointer_forward(B, Hq, Hkv, T, S, D, causal, dtype, layout, scale):
    """The TMA-descriptor path reads the same tiles (zero-filled past T and D where the pointer path
    masks to 0), so under the interpreter it must give the same bits, statistics included (on a GPU,
    where another instruction schedule may round differently, within the output tolerance)."""
    from grokcopy.kernels.flash_attention import _tma_descriptors

    q, k, v = (t.detach() for t in make_qkv(B, Hq, Hkv, T, S, D, dtype, layout))
    targets = torch.randint(-1, S, (B, T, 2), device=DEVICE)
    out_probe = torch.empty(B, T, Hq, D, dtype=dtype, device=DEVICE).transpose(1, 2)
    assert _tma_descriptors(q, k, v, out_probe, True) is not None  # this layout does take the TMA path
    for kwargs in ({}, {"targets": targets}):
        pointer = flash_attention_forward(q, k, v, causal=causal, softmax_scale=scale, use_tma=False, **kwargs)
        tma = flash_attention_forward(q, k, v, causal=causal, softmax_scale=scale, use_tma=True, **kwargs)
        for a, b in zip(pointer, tma, strict=True):
            assert (a is None) == (b is None)
            if a is not None and DEVICE == "cpu":
                assert torch.equal(a, b)
            elif a is not None:
                assert_close(b, a.double(), TOL[dtype]["out"], "tma")


def test_tma_is_opt_in_and_falls_back_on_layouts_the_copy_engine_cannot_address(monkeypatch):
    from grokcopy.kernels.flash_attention import _tma_descriptors

    q, k, v = (t.detach() for t in make_qkv(1, 2, 2, 17, 17, 32, torch.float32))
    out = torch.empty_like(q)
    assert _tma_descriptors(q, k, v, out, None) is None  # off unless asked for
    monkeypatch.setenv("GROKCOPY_ATTENTION_TMA", "1")
    assert _tma_descriptors(q, k, v, out, None) is None if not q.is_cuda else True  # a GPU only
    # a base 4 bytes past a 16-byte boundary: no descriptor, and the pointer path gives the answer
    shifted = torch.randn(1 * 2 * 17 * 32 + 1, device=DEVICE)[1:].view(1, 2, 17, 32)
    assert _tma_descriptors(shifted, k, v, out, True) is None
    got, _, _, _ = flash_attention_forward(shifted, k, v, causal=True, use_tma=True)
    assert_close(got, reference_fwd_bwd(shifted, k, v, torch.zeros_like(out), True)[0], TOL[torch.float32]["out"],
                 "out")
