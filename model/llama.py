"""A minimal Llama: token embedding, pre-RMSNorm blocks (RoPE causal self-attention with optional
grouped KV heads and optional NoPE layers, SwiGLU MLP), final RMSNorm, LM head.

Conventions (the same as Hugging Face's LlamaForCausalLM, so export needs no permutation): RoPE
rotates the two halves of each head (`rotate_half`), the norm computes in fp32 and multiplies
the weight after casting back. Weights are packed for speed: `wqkv` holds [q; k; v] rows and
`w_gate_up` holds [gate; up] rows, so each is one matmul.

Mixed precision (bf16 autocast, the default on CUDA and CPU): the residual stream is fp32. The
embedding, the parameters and every `x + branch` stay fp32; each branch (attention, MLP) computes
in bf16 and returns bf16; each norm reads the fp32 stream and writes bf16, the dtype the next
matmul reads anyway (backends.rms_norm, `out_dtype`). This is what Hugging Face's Llama does under
autocast and what the torch backends always did, so CPU results, GPU results and HF exports agree.
The cost is bandwidth in the norms: the fused add + norm moves 12 bytes per element forward (bf16
branch, fp32 stream in and out, bf16 output) where an all-bf16 stream would move 8. The gain: the
stream accumulates 2 x n_layers additions without bf16 rounding. Measured on `tiny` (CPU, 3,000
steps, one seed each), the choice does not show in the loss: val loss 3.036 with the fp32 stream,
3.016 with a bf16 one, a difference of the size another rounding path alone makes. The fp32 stream
stays because it is the reference semantics (HF, the CPU history) and the safer one at 12+ layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from grokcopy.kernels.reference import AttentionStats
from grokcopy.model import backends
from grokcopy.model.config import LlamaConfig


def rope_tables(T: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, head_dim] (fp32) for positions 0..T-1, halves repeated (HF layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


class OpBackend:
    """The backend of one op, as the config names it ("auto" included), resolved once per device type
    (the model may be built on the CPU and moved): model/backends.py holds the choices."""

    def __init__(self, op: str, requested: str):
        self.op, self.requested = op, requested
        self._resolved: dict[tuple[str, bool], str] = {}

    def on(self, x: torch.Tensor, dropout: bool = False) -> str:
        key = (x.device.type, dropout)
        if key not in self._resolved:
            self._resolved[key] = backends.resolve(self.op, self.requested, x.device.type, dropout)
        return self._resolved[key]


class RMSNorm(nn.Module):
    """RMSNorm with its weight; `forward_add` fuses the residual add before it (the fp32 stream)."""

    def __init__(self, dim: int, eps: float, backend: str = "auto"):
        super().__init__()
        self.eps, self.backend = eps, OpBackend("norm", backend)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] -> normalised, in x's dtype or the autocast dtype."""
        return backends.rms_norm(x, self.weight, self.eps, self.backend.on(x))

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual)."""
        return backends.add_rms_norm(x, residual, self.weight, self.eps, self.backend.on(x))


class SwiGLU(nn.Module):
    """The MLP: w_down(silu(gate) * up), with [gate; up] packed in one matmul (w_gate_up)."""

    def __init__(self, d_model: int, d_mlp: int, backend: str = "auto"):
        super().__init__()
        self.backend = OpBackend("mlp", backend)
        self.w_gate_up = nn.Linear(d_model, 2 * d_mlp, bias=False)
        self.w_down = nn.Linear(d_mlp, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.w_gate_up(x)
        return self.w_down(backends.swiglu_packed(gate_up, self.backend.on(gate_up)))


class Attention(nn.Module):
    """Causal self-attention with RoPE (unless `rope` is False: a NoPE layer) and grouped KV heads;
    q, k, v from one packed matmul (wqkv)."""

    def __init__(self, cfg: LlamaConfig, rope: bool = True):
        super().__init__()
        self.cfg, self.backend, self.rope = cfg, OpBackend("attention", cfg.attention), rope
        self.rope_backend = OpBackend("rope", cfg.attention)  # RoPE follows the attention's choice
        hd = cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * hd, bias=cfg.attention_bias)
        self.wo = nn.Linear(cfg.n_heads * hd, cfg.d_model, bias=cfg.attention_bias)

    def forward(self, x, cos, sin, targets=None):
        """x [B, T, d_model] -> ([B, T, d_model], AttentionStats or None)."""
        cfg, (B, T, _) = self.cfg, x.shape
        q, k, v = self.wqkv(x).split(
            [cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim], dim=-1
        )
        q, k = q.view(B, T, cfg.n_heads, cfg.head_dim), k.view(B, T, cfg.kv_heads, cfg.head_dim)
        if self.rope:
            q, k = backends.rope(q, k, cos, sin, self.rope_backend.on(x))
        v = v.view(B, T, cfg.kv_heads, cfg.head_dim)
        dropout_p = cfg.dropout if self.training else 0.0
        out, stats = backends.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        backend=self.backend.on(x, dropout_p > 0), dropout_p=dropout_p,
                                        targets=targets)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1)), stats


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig, rope: bool = True):
        super().__init__()
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm)
        self.attn = Attention(cfg, rope)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_mlp, cfg.mlp)
        self.dropout = nn.Dropout(cfg.dropout)
        self._register_load_state_dict_pre_hook(_rename_legacy_mlp_keys)

    def forward(self, x, cos, sin, targets=None):
        attn_out, stats = self.attn(self.attn_norm(x), cos, sin, targets)
        # residual add fused into the MLP's norm: x <- x + attn_out, h <- norm(x)
        h, x = self.mlp_norm.forward_add(self.dropout(attn_out), x)
        return x + self.dropout(self.mlp(h)), stats


def _rename_legacy_mlp_keys(state_dict, prefix, *args) -> None:
    """Checkpoints written before the MLP became a module hold `w_gate_up` / `w_down` on the block."""
    for name in ("w_gate_up.weight", "w_down.weight"):
        if prefix + name in state_dict:
            state_dict[prefix + "mlp." + name] = state_dict.pop(prefix + name)


class Llama(nn.Module):
    """Causal Llama language model. forward(idx [B, T] int64) -> logits [B, T, vocab_size], or with
    targets the mean cross-entropy instead (through the loss backend, which may never form the logits)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, cfg.uses_rope(i)) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.dropout = nn.Dropout(cfg.dropout)
        self.loss_backend = OpBackend("loss", cfg.loss)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Llama initialisation (as HF's LlamaPreTrainedModel): every weight matrix and the
        embedding ~ N(0, init_std), biases 0, norm weights 1."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, attention_targets: torch.Tensor | None = None,
                targets: torch.Tensor | None = None):
        """idx [B, T] int64, T <= context -> logits [B, T, vocab] (fp32 unless under autocast).

        With targets [B, T] (int64, -100 ignored) it returns the mean cross-entropy (fp32 scalar) in
        place of the logits: the loss backend's, and the triton one never forms them (at paper-162m
        the fp32 logits alone are 4.2 GB). Training calls it this way, so that DDP and torch.compile
        see the loss inside the module they wrap.

        With attention_targets [B, T, K] (key indices, -1 = none) it returns (logits or loss,
        [AttentionStats per layer]): the statistics the induction scores are made of.
        """
        B, T = idx.shape
        if T > self.cfg.context:
            raise ValueError(f"sequence of {T} tokens is longer than the model's context ({self.cfg.context})")
        cos, sin = rope_tables(T, self.cfg.head_dim, self.cfg.rope_theta, idx.device)
        x = self.dropout(self.embed(idx))
        all_stats: list[AttentionStats] = []
        for block in self.blocks:
            x, stats = block(x, cos, sin, attention_targets)
            all_stats.append(stats)
        h = self.norm(x)
        if targets is None:
            out = self.lm_head(h)
        else:
            out = backends.loss(h, self.lm_head.weight, targets, self.loss_backend.on(h))
        return out if attention_targets is None else (out, all_stats)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (fp32) of idx [B, T] against targets [B, T]: forward's loss."""
        return self(idx, targets=targets)
