"""Model configuration and presets.

A preset is data: a model shape plus the training recipe that goes with it (train.py reads the
recipe; any field can still be overridden by a config file or a flag).
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields

ATTENTION_BACKENDS = ("auto", "torch", "sdpa", "flash_attn", "triton")
NORM_BACKENDS = ("auto", "torch", "triton")
MLP_BACKENDS = ("auto", "torch", "triton")
LOSS_BACKENDS = ("auto", "torch", "triton")


@dataclass
class LlamaConfig:
    """Shape and behaviour of a Llama: pre-RMSNorm blocks, RoPE attention (optionally grouped KV
    heads, optionally NoPE layers), SwiGLU MLP. `attention`, `norm`, `mlp` and `loss` (the LM head's
    cross-entropy) pick each op's backend ("auto": the fastest available on the device the model
    runs on); RoPE follows `attention` (model/backends.py)."""

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
    # biases on the q, k, v and output projections (HF LlamaConfig.attention_bias): a query or
    # key bias is a direction shared by every position, which lets layer 0 attend by relative
    # position under RoPE before its token embeddings have any common component
    attention_bias: bool = False
    # every Nth layer (N-1, 2N-1, ... counting from 0) attends without RoPE: HF SmolLM3's
    # no_rope_layer_interval (Llama 4 does the same with N = 4); 0: RoPE in every layer. Such a
    # layer sees no relative position, so it cannot become a previous-token head, and an
    # induction head there matches content alone (docs/TINY.md, round 7)
    nope_every: int = 0
    attention: str = "auto"
    norm: str = "auto"
    mlp: str = "auto"
    loss: str = "auto"

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_heads, or n_heads when that is None (so it follows --n-heads)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def uses_rope(self, layer: int) -> bool:
        """Whether block `layer` (0-based) rotates its queries and keys (see nope_every)."""
        return self.nope_every == 0 or (layer + 1) % self.nope_every != 0

    @property
    def nope_layers(self) -> list[int]:
        """The blocks (0-based) that attend without RoPE."""
        return [i for i in range(self.n_layers) if not self.uses_rope(i)]

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
        if self.nope_every < 0:
            raise ValueError(f"nope_every must be >= 0 (0: RoPE in every layer), got {self.nope_every}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("attention", ATTENTION_BACKENDS), ("norm", NORM_BACKENDS), ("mlp", MLP_BACKENDS),
                              ("loss", LOSS_BACKENDS)):
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


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


@dataclass
class TrainConfig:
    """Everything a run is made of, except the model shape (LlamaConfig). Each field is a flag."""

    preset: str = "tiny"
    out: str = ""  # run directory; default runs/<preset>
    data: str = ""  # a prepared corpus directory; default: the embedded Python-stdlib corpus
    max_steps: int = 1000
    batch_size: int = 8  # sequences per rank per micro-step
    grad_accum: int = 1
    global_batch: int = 0  # if set: sequences per optimizer step, all ranks; sets grad_accum
    seq_len: int = 256
    lr: float = 1e-3
    min_lr: float | None = None  # cosine floor; None: min_lr_ratio x lr
    min_lr_ratio: float = 0.1  # the floor as a fraction of lr where min_lr is not given (it follows --lr)
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # every window (training, validation and the copy/repeat evals) starts with the corpus's
    # end-of-text token, an attention sink at position 0 for heads that have nothing to attend to
    sink: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    # every N steps (0: never) the training forward also returns the previous-token and
    # prefix-matching mass of rank 0's batch (the attention-stats path: the Triton kernel on
    # attention=triton, else the torch reference, the same math in other rounding)
    train_stats_every: int = 0
    ckpt_every: int = 1000
    keep_ckpts: int = 3
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | fp32 | bf16: autocast dtype of the forward pass (auto: train.forward_dtype)
    compile: bool = False
    fsdp: bool = False
    quiet: bool = False
    init_from_hf: str = ""  # an HF Llama directory: its shape and weights start a fresh run
    tensorboard: bool | None = None  # event files in <run>/tb; None: on when tensorboard is installed
    # bit-identical runs and resumes at a fixed thread count (train.use_deterministic_algorithms);
    # None: on for the CPU, where it costs little, off on CUDA, where it costs speed
    deterministic: bool | None = None
    wandb: bool = False  # log the same records to Weights & Biases (the `wandb` extra)
    wandb_project: str = "grokcopy"
    change_recipe: bool = False  # on resume: accept recipe fields that differ from the checkpoint's
    restart: bool = False  # start over in an --out that holds a run's history but no checkpoint


def field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def scalar_type(hint) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of an annotation like int, float | None, bool | None."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def check_type(name: str, value, hint, source: str) -> object:
    """`value` as the annotated type, or ConfigError naming the field: 20.5 is no int, "no" no bool."""
    kind, optional = scalar_type(hint)
    if value is None and optional:
        return None
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool), str: isinstance(value, str)}[kind]
    if not ok:
        raise ConfigError(f"{source} {name} = {value!r} is not {'an' if kind is int else 'a'} {kind.__name__}")
    return float(value) if kind is float else value


@dataclass
class Preset:
    """A named model shape and its default training recipe (TrainConfig field name -> value, each
    checked against the field's type when the preset is made)."""

    model: LlamaConfig
    train: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        hints = field_types(TrainConfig)
        unknown = sorted(set(self.train) - set(hints))
        if unknown:
            raise ConfigError(f"preset recipe: unknown TrainConfig fields {unknown}")
        for name, value in self.train.items():
            check_type(name, value, hints[name], "preset recipe:")


PRESETS: dict[str, Preset] = {
    # The embedded default for the 2-core CPU, chosen by the searches in docs/TINY.md (the last: its
    # "Issue 15" section). Three layers: the previous-token head forms in layer 1 and the induction
    # head in layer 2 reads it. nope_every=3: the last layer attends without RoPE (SmolLM3's NoPE
    # layers), so it cannot take the previous-token head itself, which it did on about half the
    # seeds with RoPE everywhere, leaving the circuit no layer above it (round 7). init_std 0.006
    # instead of 0.02: the surge moves from ~5,300 to ~2,400 steps (0.002 is too small). LR 1e-2 at
    # batch 8 (2e-2 stalled on seed 1), cosine to lr/100 (sharpens the copying after the surge; lr/10
    # ended lower on the two runs compared, round 7). sink: every window starts with the end-of-text
    # token, an attention sink. BPE-1024: the same cost per token as 512, 1.2x the text per token.
    # attention="torch": plain-math attention is 1.07x faster than sdpa on the CPU. compile: training
    # steps run 1.8x faster after ~30 s of compilation (train.py trains eagerly where no C++ compiler
    # exists). max_steps and eval_every keep the whole README command (corpus preparation included)
    # under 10 minutes on one thread of a 2-core x86 CPU with native bf16 (docs/TINY.md, round 8).
    "tiny": Preset(
        model=LlamaConfig(vocab_size=1024, n_layers=3, n_heads=2, d_model=64, d_mlp=256, context=256,
                          init_std=0.006, nope_every=3, attention="torch"),
        train=dict(seq_len=256, batch_size=8, lr=1e-2, min_lr_ratio=0.01, warmup_steps=200, schedule="cosine",
                   weight_decay=0.1, sink=True, max_steps=7000, eval_every=300, ckpt_every=2000, compile=True),
        description="3 layers x d64 (the last without RoPE) on BPE-1024 Python source, small init, attention "
                    "sink: the CPU default",
    ),
    # The seed paper's model (arXiv 2409.09281): 162M parameters with untied embeddings.
    "paper-162m": Preset(
        model=LlamaConfig(vocab_size=32000, n_layers=12, n_heads=12, d_model=768, d_mlp=3072, context=1024),
        train=dict(seq_len=1024, batch_size=32, grad_accum=1, lr=6e-4, min_lr=6e-5, warmup_steps=2000,
                   schedule="cosine", weight_decay=0.1, max_steps=100000, eval_every=1000, ckpt_every=1000),
        description="12 layers x d768, MLP 3072, vocab 32000, context 1024: the paper's 162M model",
    ),
}
