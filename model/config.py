"""Model configuration and presets.

A preset is data: a model shape plus the training recipe that goes with it (train.py reads the
recipe; any field can still be overridden by a config file or a flag).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

ATTENTION_BACKENDS = ("auto", "torch", "sdpa", "flash_attn", "triton")
NORM_BACKENDS = ("auto", "torch", "triton")
MLP_BACKENDS = ("auto", "torch", "triton")


@dataclass
class LlamaConfig:
    """Shape and behaviour of a Llama: pre-RMSNorm blocks, RoPE attention (optionally grouped KV
    heads), SwiGLU MLP. `attention`, `norm` and `mlp` pick each op's backend ("auto": the fastest
    available on the device the model runs on)."""

    vocab_size: int = 32000
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None: as many as n_heads (plain multi-head attention)
    d_model: int = 768
    d_mlp: int = 3072
    context: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dropout: float = 0.0  # on attention probabilities and on each residual branch
    init_std: float = 0.02
    attention: str = "auto"
    norm: str = "auto"
    mlp: str = "auto"

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_heads, or n_heads when that is None (so it follows --n-heads)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def validate(self) -> None:
        """Raise ValueError naming the field for any inconsistent value."""
        for name in ("vocab_size", "n_layers", "n_heads", "kv_heads", "d_model", "d_mlp", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = d_model / n_heads = {self.head_dim} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("attention", ATTENTION_BACKENDS), ("norm", NORM_BACKENDS), ("mlp", MLP_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} backend {getattr(self, name)!r}; choose from {list(allowed)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LlamaConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class Preset:
    """A named model shape and its default training recipe (train.py field name -> value)."""

    model: LlamaConfig
    train: dict = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    # The embedded default for the 2-core CPU, chosen by the search in docs/TINY.md. Three layers,
    # not two: with RoPE the previous-token head forms in layer 1 (layer 0 has no position-only
    # signal to build it from), and the induction head needs a layer after it.
    "tiny": Preset(
        model=LlamaConfig(vocab_size=512, n_layers=3, n_heads=2, d_model=64, d_mlp=256, context=256),
        train=dict(seq_len=256, batch_size=4, lr=3e-3, warmup_steps=200, schedule="constant",
                   weight_decay=0.1, max_steps=20000, eval_every=500, ckpt_every=2000),
        description="3 layers x d64 on BPE-512 Python source: the CPU default",
    ),
    # The seed paper's model (arXiv 2409.09281): 162M parameters with untied embeddings.
    "paper-162m": Preset(
        model=LlamaConfig(vocab_size=32000, n_layers=12, n_heads=12, d_model=768, d_mlp=3072, context=1024),
        train=dict(seq_len=1024, batch_size=32, grad_accum=1, lr=6e-4, min_lr=6e-5, warmup_steps=2000,
                   schedule="cosine", weight_decay=0.1, max_steps=100000, eval_every=1000, ckpt_every=1000),
        description="12 layers x d768, MLP 3072, vocab 32000, context 1024: the paper's 162M model",
    ),
}
