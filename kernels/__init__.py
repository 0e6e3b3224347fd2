from kernels.attention_targets import induction_targets, previous_token_targets, repeat_targets
from kernels.flash_attention import (
    AttentionStats,
    attention_reference,
    attention_stats_reference,
    flash_attention,
    flash_attention_backward,
    flash_attention_forward,
    flash_attention_with_stats,
)
from kernels.rms_norm import fused_add_rms_norm, rms_norm
from kernels.swiglu import swiglu, swiglu_packed

__all__ = ["rms_norm", "fused_add_rms_norm", "swiglu", "swiglu_packed"]
__all__ += [
    "AttentionStats",
    "attention_reference",
    "attention_stats_reference",
    "flash_attention",
    "flash_attention_backward",
    "flash_attention_forward",
    "flash_attention_with_stats",
    "induction_targets",
    "previous_token_targets",
    "repeat_targets",
]
