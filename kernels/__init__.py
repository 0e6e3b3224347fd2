"""grokcopy's Triton kernels: fused RMSNorm (+ residual add), SwiGLU, FlashAttention (+ statistics),
rotary position embedding and fused linear + cross-entropy.

Each op file holds the kernels, the launchers and the torch.library registration; kernels/reference.py
holds the plain-PyTorch function each one computes. The references need no Triton: on a machine
without it (macOS) `import kernels` gives them alone, and the model runs on its torch backend.
"""

import importlib.util

from grokcopy.kernels.reference import (
    AttentionStats,
    attention_reference,
    attention_stats_reference,
    fused_add_rms_norm_reference,
    linear_cross_entropy_reference,
    rms_norm_reference,
    rotary_reference,
    swiglu_reference,
)

__all__ = ["AttentionStats", "attention_reference", "attention_stats_reference", "fused_add_rms_norm_reference",
           "linear_cross_entropy_reference", "rms_norm_reference", "rotary_reference", "swiglu_reference"]

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON:
    from grokcopy.kernels.flash_attention import (
        flash_attention,
        flash_attention_backward,
        flash_attention_forward,
        flash_attention_with_stats,
    )
    from grokcopy.kernels.linear_cross_entropy import linear_cross_entropy
    from grokcopy.kernels.rms_norm import fused_add_rms_norm, rms_norm
    from grokcopy.kernels.rotary import rotary
    from grokcopy.kernels.swiglu import swiglu, swiglu_packed

    __all__ += ["flash_attention", "flash_attention_backward", "flash_attention_forward", "flash_attention_with_stats",
                "fused_add_rms_norm", "linear_cross_entropy", "rms_norm", "rotary", "swiglu", "swiglu_packed"]
