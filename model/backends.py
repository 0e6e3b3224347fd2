"""The per-op backend switch: every backend of an op computes the same function.

attention: torch (plain math, the reference), sdpa (torch's fused kernels), flash_attn (the
           flash-attn package, if installed), triton (grokcopy's kernels)
norm, mlp: torch, triton

"auto" picks the fastest available on the tensor's device: the Triton norm and MLP kernels on
CUDA, torch on CPU (Triton runs on CPU only through its interpreter, which is for tests, not
training). Attention stays on sdpa: on an H100 (bench/results/h100-80gb-hbm3-2026-11-25) the model
trained at 302k tokens/s with SDPA and 295k with the Triton attention; `--attention triton` selects it.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from grokcopy.kernels import reference


def available(op: str, backend: str) -> bool:
    """Whether `backend` can run `op` in this installation (not whether it suits a device).

    Not memoised here: model.llama.OpBackend resolves each op once per device, and torch.compile
    traces that first resolution, where a functools cache only earns a warning per run."""
    if backend in ("torch", "sdpa"):
        return True
    if backend == "flash_attn":
        return op == "attention" and importlib.util.find_spec("flash_attn") is not None
    if backend == "triton":
        try:
            from grokcopy import kernels
        except ImportError:
            return False
        name = {"attention": "flash_attention", "norm": "rms_norm", "mlp": "swiglu_packed"}[op]
        return hasattr(kernels, name)
    return False


def resolve(op: str, backend: str, device_type: str, dropout: bool = False) -> str:
    """The concrete backend for `op` on `device_type`; raises naming the op if it cannot run."""
    if backend == "auto":
        if op == "attention":
            return "sdpa"
        return "triton" if device_type == "cuda" and available(op, "triton") else "torch"
    if not available(op, backend):
        raise ValueError(f"{op} backend {backend!r} is not available here (is its package installed?)")
    if backend in ("flash_attn",) and device_type != "cuda":
        raise ValueError(f"{op} backend {backend!r} needs a CUDA device, the model is on {device_type}")
    if op == "attention" and dropout and backend == "triton":
        raise ValueError("attention backend 'triton' has no attention dropout; use 'sdpa' or 'torch' with dropout")
    return backend


# ---------------------------------------------------------------------------------------------
# The ops. q [B, Hq, T, D]; k, v [B, Hkv, T, D]; causal. The torch backend of every op is its
# reference in kernels/reference.py (one definition; no Triton needed).


def attention(q, k, v, *, backend: str, dropout_p: float = 0.0, targets: torch.Tensor | None = None):
    """Causal attention by `backend` (already resolved). Returns (out [B, Hq, T, D], stats or None).

    With `targets` [B, T, K] the AttentionStats come back too: the triton backend computes them
    inside its kernel, torch from its score matrix, sdpa and flash_attn beside their kernel in
    chunks without autograd (reference.causal_attention_stats: no [B, H, T, T] kept for backward).
    """
    if backend == "triton":
        from grokcopy import kernels

        if targets is not None:
            return kernels.flash_attention_with_stats(q, k, v, targets=targets, causal=True)
        return kernels.flash_attention(q, k, v, causal=True), None
    if backend == "torch":
        if targets is None:
            return reference.attention_reference(q, k, v, dropout_p=dropout_p), None
        return reference.attention_stats_reference(q, k, v, targets, dropout_p=dropout_p)
    if backend == "sdpa":
        out = attention_sdpa(q, k, v, dropout_p)
    elif backend == "flash_attn":
        out = attention_flash_attn(q, k, v, dropout_p)
    else:
        raise ValueError(f"unknown attention backend {backend!r}")
    return out, None if targets is None else reference.causal_attention_stats(q, k, targets)


def attention_sdpa(q, k, v, dropout_p: float = 0.0):
    if q.shape[1] != k.shape[1]:
        n_rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


def attention_flash_attn(q, k, v, dropout_p: float = 0.0):
    from flash_attn import flash_attn_func  # optional extra `gpu`, imported only when chosen

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=True)
    return out.transpose(1, 2)


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast gives matmuls on x's device, or None when autocast is off there."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    """x [..., D] normalised in fp32, scaled by weight [D] (fp32 parameter).

    Returns x's dtype, or under autocast the autocast dtype: the norm's output only feeds a
    matmul, which would round it to that dtype anyway, so writing it there saves a pass and the
    result is the same bits on either backend.
    """
    if backend == "triton":
        from grokcopy import kernels

        return kernels.rms_norm(x, weight, eps, out_dtype=autocast_dtype(x))
    return reference.rms_norm_reference(x, weight, eps, out_dtype=autocast_dtype(x))


def add_rms_norm(x, residual, weight, eps: float, backend: str):
    """(rms_norm(x + residual), x + residual): the residual add fused into the norm on triton.

    x is a branch's output (bf16 under autocast), residual the fp32 stream; the sum stays fp32.
    """
    if backend == "triton":
        from grokcopy import kernels

        return kernels.fused_add_rms_norm(x, residual, weight, eps, out_dtype=autocast_dtype(x))
    return reference.fused_add_rms_norm_reference(x, residual, weight, eps, out_dtype=autocast_dtype(x))


def swiglu_packed(gate_up: torch.Tensor, backend: str) -> torch.Tensor:
    """silu(gate_up[..., :I]) * gate_up[..., I:] for gate_up [..., 2I]."""
    if backend == "triton":
        from grokcopy import kernels

        return kernels.swiglu_packed(gate_up)
    return reference.swiglu_reference(*gate_up.chunk(2, dim=-1))
