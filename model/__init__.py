"""A minimal Llama with a per-op backend switch, presets and checkpoints."""

from model.backends import AttentionStats
from model.checkpoint import load_checkpoint
from model.config import PRESETS, LlamaConfig, Preset
from model.llama import Llama

__all__ = ["PRESETS", "AttentionStats", "Llama", "LlamaConfig", "Preset", "load_checkpoint"]
