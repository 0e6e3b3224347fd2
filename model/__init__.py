"""A minimal Llama with a per-op backend switch, presets, checkpoints and Hugging Face interop."""

from grokcopy.kernels.reference import AttentionStats
from grokcopy.model.config import PRESETS, LlamaConfig, Preset
from grokcopy.model.llama import Llama
from grokcopy.model.run_dir import load_checkpoint

__all__ = ["PRESETS", "AttentionStats", "Llama", "LlamaConfig", "Preset", "from_hf", "load_checkpoint"]


def __getattr__(name: str):
    # model.hf is imported on first use of from_hf, not with the package, so that
    # `python -m grokcopy.model.hf` does not find itself already imported
    if name == "from_hf":
        from grokcopy.model.hf import from_hf

        return from_hf
    raise AttributeError(f"module 'model' has no attribute {name!r}")
