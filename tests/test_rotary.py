"""The rotary kernel (kernels/rotary.py) against rotary_reference in float64, forward and backward:
q and k sliced from one packed qkv projection, grouped KV heads, a half-head width that is not a
power of two, and torch.compile tracing it whole."""

import pytest
import torch
from kernel_testing import DEVICE, assert_rel_close, float64_leaf

from grokcopy import kernels
from grokcopy.kernels.reference import rotary_reference
from grokcopy.model.llama import rope_tables

TOL = {torch.float32: 1e-6, torch.bfloat16: 8e-3}


def packed_qk(B, T, n_q_heads, n_k_heads, D, dtype):
    """q and k as the model makes them: strided views of one [B, T, (Hq + 2 Hkv) D] projection."""
    qkv = torch.randn(B, T, (n_q_heads + 2 * n_k_heads) * D, device=DEVICE).to(dtype)
    q = qkv[..., : n_q_heads * D].view(B, T, n_q_heads, D)
    k = qkv[..., n_q_heads * D : (n_q_heads + n_k_heads) * D].view(B, T, n_k_heads, D)
    return q.requires_grad_(), k.requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("n_q_heads", "n_k_heads", "D"), [(4, 2, 16), (3, 3, 12)], ids=["gqa-D16", "mha-D12"])
def test_matches_the_reference_forward_and_backward(dtype, n_q_heads, n_k_heads, D):
    B, T = 2, 37  # 74 rows: two programs of BLOCK_T rows, the second partial
    q, k = packed_qk(B, T, n_q_heads, n_k_heads, D, dtype)
    cos, sin = rope_tables(T + 3, D, 10000.0, DEVICE)  # tables longer than T: rows past T unused
    q_rot, k_rot = kernels.rotary(q, k, cos, sin)
    assert q_rot.is_contiguous() and k_rot.is_contiguous() and q_rot.dtype == k_rot.dtype == dtype
    dq_out, dk_out = torch.randn_like(q_rot), torch.randn_like(k_rot)
    torch.autograd.backward([q_rot, k_rot], [dq_out, dk_out])

    q64, k64 = float64_leaf(q), float64_leaf(k)
    cos64, sin64 = cos[:T].double(), sin[:T].double()
    q_ref, k_ref = rotary_reference(q64, cos64, sin64), rotary_reference(k64, cos64, sin64)
    torch.autograd.backward([q_ref, k_ref], [dq_out.double(), dk_out.double()])
    assert_rel_close(q_rot, q_ref, TOL[dtype], "q")
    assert_rel_close(k_rot, k_ref, TOL[dtype], "k")
    assert q.grad.dtype == dtype
    assert_rel_close(q.grad, q64.grad, TOL[dtype], "dq")
    assert_rel_close(k.grad, k64.grad, TOL[dtype], "dk")


def test_position_zero_is_the_identity_and_norms_are_kept():
    q, k = packed_qk(1, 5, 2, 1, 8, torch.float32)
    cos, sin = rope_tables(5, 8, 10000.0, DEVICE)
    q_rot, k_rot = kernels.rotary(q, k, cos, sin)
    assert torch.equal(q_rot[:, 0], q[:, 0]) and torch.equal(k_rot[:, 0], k[:, 0])
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))  # a rotation of each pair


def test_fullgraph_compile_matches_eager():
    torch._dynamo.reset()
    q, k = packed_qk(2, 9, 2, 1, 16, torch.float32)
    q2, k2 = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    cos, sin = rope_tables(9, 16, 10000.0, DEVICE)
    eager = kernels.rotary(q, k, cos, sin)
    compiled = torch.compile(kernels.rotary, fullgraph=True, backend="aot_eager")(q2, k2, cos, sin)
    grads = [torch.randn_like(t) for t in eager]
    torch.autograd.backward(list(eager), grads)
    torch.autograd.backward(list(compiled), grads)
    for a, b in zip(eager, compiled, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(q2.grad, q.grad) and torch.equal(k2.grad, k.grad)


def test_rejects_mismatched_inputs():
    q, k = packed_qk(1, 4, 2, 1, 8, torch.float32)
    cos, sin = rope_tables(4, 8, 10000.0, DEVICE)
    with pytest.raises(ValueError, match="cos and sin"):
        kernels.rotary(q, k, cos[:3], sin[:3])
    with pytest.raises(TypeError, match="fp32 tables"):
        kernels.rotary(q, k, cos.bfloat16(), sin.bfloat16())
