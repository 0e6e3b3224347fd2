"""Training-step throughput of the grokcopy Llama per backend, against eager PyTorch + SDPA and
torch.compile of the same model, all in one run.

CPU: the `tiny` preset (the default run: torch attention, compiled), torch/sdpa attention, eager vs
compiled.
CUDA: `paper-162m` in bf16 autocast, with the Triton backends (where the kernels exist) and the
model FLOPs utilisation: (6 N + attention) FLOPs per token over the device's measured bf16 matmul
peak. Run: pytest bench/test_train.py --benchmark-json bench/results/train-<machine>.json
"""

from __future__ import annotations

import platform
import time

import pytest
import torch

from grokcopy.model import PRESETS, Llama
from grokcopy.model.backends import available

CUDA = torch.cuda.is_available()
PRESET = "paper-162m" if CUDA else "tiny"
DEVICE = torch.device("cuda" if CUDA else "cpu")
BATCH = 8 if CUDA else PRESETS["tiny"].train["batch_size"]
STEPS = 10

VARIANTS = {  # name: (attention, norm, mlp, compile)
    "eager-sdpa": ("sdpa", "torch", "torch", False),
    "eager-torch-attention": ("torch", "torch", "torch", False),
    "compiled-sdpa": ("sdpa", "torch", "torch", True),
    "compiled-torch-attention": ("torch", "torch", "torch", True),  # tiny's own backends and compile
}
if CUDA:
    VARIANTS["grokcopy-triton"] = ("triton", "triton", "triton", False)
    VARIANTS["flash-attn"] = ("flash_attn", "torch", "torch", False)

results: dict[str, float] = {}


def model_flops_per_token(model: Llama, seq_len: int) -> float:
    """6 N (forward + backward of every weight, embeddings excluded) + causal attention scores."""
    cfg = model.cfg
    n = model.num_parameters() - cfg.vocab_size * cfg.d_model
    return 6 * n + 6 * cfg.n_layers * cfg.d_model * seq_len  # 12 L d T / 2 for the causal half


@pytest.fixture(scope="module")
def peak_tflops() -> float:
    """bf16 matmul TFLOP/s measured on this GPU (8192^3), the denominator of MFU."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    from triton.testing import do_bench

    ms = do_bench(lambda: a @ a, warmup=10, rep=50, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_step(benchmark, variant, request):
    attention, norm, mlp, compile_model = VARIANTS[variant]
    for op, backend in (("attention", attention), ("norm", norm), ("mlp", mlp)):
        if not available(op, backend):
            pytest.skip(f"{op} backend {backend} is not installed")
    preset = PRESETS[PRESET]
    cfg = preset.model
    cfg = type(cfg)(**{**cfg.to_dict(), "attention": attention, "norm": norm, "mlp": mlp})
    seq_len = preset.train["seq_len"]
    torch.manual_seed(0)
    model = Llama(cfg).to(DEVICE)
    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=CUDA or None)
    batch = torch.randint(0, cfg.vocab_size, (BATCH, seq_len + 1), device=DEVICE)
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16)

    def step():
        with autocast:
            loss = step_model(batch[:, :-1], targets=batch[:, 1:])  # the trainer's loss path (fused on CUDA)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if CUDA:
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up, and compilation for the compiled variant
        step()
    benchmark.pedantic(step, rounds=STEPS, warmup_rounds=1, iterations=1)
    tokens_per_s = BATCH * seq_len / benchmark.stats.stats.median
    results[variant] = tokens_per_s
    benchmark.extra_info.update(
        preset=PRESET, device=torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu",
        torch=torch.__version__, threads=torch.get_num_threads(), batch=BATCH, seq_len=seq_len,
        tokens_per_s=tokens_per_s, date=time.strftime("%Y-%m-%d"),
    )
    if CUDA:
        benchmark.extra_info["mfu"] = (
            tokens_per_s * model_flops_per_token(model, seq_len) / (request.getfixturevalue("peak_tflops") * 1e12)
        )
    if "eager-sdpa" in results and variant != "eager-sdpa":
        benchmark.extra_info["speedup_vs_eager_sdpa"] = tokens_per_s / results["eager-sdpa"]
