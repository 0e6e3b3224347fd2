"""grokcopy: a small, fast, hackable Llama trainer with Triton kernels, built to watch copying
(induction heads) emerge during pre-training.

    from grokcopy.kernels import rms_norm, flash_attention     # the kernels, reusable on their own
    from grokcopy.model import Llama, LlamaConfig, PRESETS
    from grokcopy.data import TokenDataset, WindowSampler

Everything installs under this one name, so grokcopy never claims `kernels`, `model`, `data` or
`evals` (names other packages on PyPI use) in a researcher's environment.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout the subpackages sit at the repository root, beside train.py (kernels/ model/
# data/ evals/, where the design keeps them); an installed grokcopy has them inside this package
# (pyproject.toml's package-dir). Adding the checkout root to the package path makes
# `grokcopy.kernels` resolve in a checkout with or without `pip install -e .`.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "train.py").is_file() and (_checkout / "kernels" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (__path__ is defined for packages)
