"""The per-op backend switch: every backend of an op computes the same function.

attention: torch (plain math, the reference), sdpa (torch's fused kernels), flash_attn (the
           flash-attn package, if installed), triton (grokcopy's kernels)
norm, mlp: torch, triton
loss:      torch (F.cross_entropy on the fp32 logits), triton (fused linear + cross-entropy: no logits)
rope:      torch, triton; not a choice of its own, it follows attention: attention "triton" rotates
           with the Triton kernel, the peers (sdpa, flash_attn) and the reference (torch) with the
           reference, and "auto" with rope's entry in AUTO

"auto" picks, per op and device, the backend a GPU measured fastest: the table AUTO below, each
entry citing the bench/results/ files it comes from. On the CPU it is sdpa for attention and torch
for the norm and MLP (Triton runs there only through its interpreter, which is for tests, not
training; presets that want plain-math attention there name "torch").
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from grokcopy.kernels import reference

# What `auto` resolves to on CUDA: {op: (eager, under torch.compile, measurements)}. Measured on an H100
# (bench/results/h100-80gb-hbm3-2026-11-25) and an H200 (bench/results/h200-2026-11-26), bf16, at the
# shapes paper-162m trains (rows = 32 x 1024 tokens, d 768, MLP 3072, T 1024, head_dim 64).
# tests/test_auto_backends.py re-derives every winner from those files. Attention on steps that need
# statistics (the induction scores) runs grokcopy's stats kernel, which computes them inside the
# attention itself: "sdpa/triton" reads "sdpa, and triton where statistics are wanted".
AUTO = {
    "attention": ("sdpa/triton", "sdpa/triton",
                  "train_matrix.json (H100): in the model, sdpa-triton-triton 302k tokens/s against "
                  "triton-triton-triton 295k (with whichever kernel SDPA picks); attention.json (H100 call3; "
                  "the H200 call measured no peers), forward+backward over T 1024-4096, D 64/128: SDPA's cuDNN "
                  "kernel runs 1.27-1.69x the Triton attention (1.27x at T1024-D64, paper-162m's shape), SDPA's "
                  "flash kernel 0.90-1.12x it"),
    "norm": ("triton", "torch",
             "kernels.json, rms_norm and fused_add_rms_norm 65536x768 forward+backward: Triton 4.4x/3.7x eager "
             "torch (H100), but torch.compile's generated kernel is 1.4-1.9x the Triton one (H100 and H200), and "
             "compiled, sdpa-torch-torch trained at 320k tokens/s against 300k for sdpa-triton-triton. Under "
             "compile `auto` therefore hands the norm to Inductor, which writes and fuses its own kernel"),
    "mlp": ("triton", "triton",
            "kernels.json, swiglu_packed 65536x3072 forward+backward: Triton 6.8x eager torch and 1.06x "
            "torch.compile (H100), 1.36x compile (H200), at 98% of copy bandwidth"),
    # Not measured on a GPU yet (no bench/results entry): chosen by bytes moved. The fused loss never
    # forms the [N, V] logits (at paper-162m 2.1 GB in bf16 plus 4.2 GB as fp32, then an fp32
    # log-softmax and its gradient: ~40 GB of traffic against ~13 GB, kernels/linear_cross_entropy.py)
    "loss": ("triton", "triton",
             "unmeasured: the fused linear cross-entropy moves about a third of the plain path's bytes and "
             "never holds the 4.2 GB of fp32 logits"),
    # RoPE: one kernel over q and k instead of ~10 eager kernels per tensor; compiled, Inductor fuses
    # the eager form itself (and into its neighbours, which the opaque custom op prevents)
    "rope": ("triton", "torch",
             "unmeasured: eager, one read and write of q and k against ~10 elementwise kernels per tensor; "
             "compiled, Inductor generates the same single pass and may fuse it further"),
}


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
        name = {"attention": "flash_attention", "norm": "rms_norm", "mlp": "swiglu_packed",
                "loss": "linear_cross_entropy", "rope": "rotary"}[op]
        return hasattr(kernels, name)
    return False


def resolve(op: str, backend: str, device_type: str, dropout: bool = False) -> str:
    """The concrete backend for `op` on `device_type`; raises naming the op if it cannot run.

    For "rope", `backend` is the attention's (see the module docstring)."""
    if op == "rope" and backend not in ("auto", "triton"):
        backend = "torch"
    if backend == "auto":
        if device_type != "cuda":
            return "sdpa" if op == "attention" else "torch"
        if op not in AUTO:  # an op no GPU has compared yet: ours where it runs
            return "triton" if available(op, "triton") else "torch"
        # OpBackend resolves once per device, on the first call: under torch.compile that call is
        # traced, and a model compiled from its first step (train.py --compile) keeps the compiled choice
        eager, compiled, _ = AUTO[op]
        choice = compiled if torch.compiler.is_compiling() else eager
        # a measured winner that cannot run here (triton not installed; no dropout in its attention)
        # falls back to the peer that can, each part of "plain/with-statistics" on its own
        parts = [b if available(op, b) and not (op == "attention" and dropout and b == "triton") else
                 ("sdpa" if op == "attention" else "torch") for b in choice.split("/")]
        return "/".join(dict.fromkeys(parts))
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
    plain, _, with_stats = backend.partition("/")  # auto's "sdpa/triton": triton where statistics are wanted
    backend = with_stats if targets is not None and with_stats else plain
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


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str):
    """(q, k) rotated by position: q [B, T, Hq, D], k [B, T, Hkv, D], cos and sin [T, D] fp32.

    triton: one kernel over both (fp32 arithmetic, one rounding); torch: reference.rotary_reference
    on each, in the inputs' dtype as Hugging Face computes it."""
    if backend == "triton":
        from grokcopy import kernels

        return kernels.rotary(q, k, cos, sin)
    return reference.rotary_reference(q, cos, sin), reference.rotary_reference(k, cos, sin)


def loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, backend: str) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) of the LM head: logits = hidden [B, T, D] @ weight [V, D]^T
    against targets [B, T] (int64, -100 ignored).

    triton: the fused kernel, which never forms the logits (under autocast it casts hidden and weight
    to the autocast dtype, as the LM head's matmul would). torch: the LM head's matmul (in the
    compiled graph when the model is compiled) and then F.cross_entropy on the fp32 logits, eagerly.
    """
    if backend == "triton":
        from grokcopy import kernels

        return kernels.linear_cross_entropy(hidden.flatten(0, -2), weight, targets.reshape(-1))
    return _eager_cross_entropy(F.linear(hidden, weight), targets)


@torch.compiler.disable
def _eager_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The torch backend's cross-entropy, kept out of torch.compile's graph: train.py computed it
    eagerly on the compiled model's logits before the loss moved into the model, and the CPU default
    (`tiny`, compiled) must keep those bits, which Inductor's own log-softmax would not."""
    return reference.cross_entropy_reference(logits, targets)
