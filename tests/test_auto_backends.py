"""`auto` (model/backends.py AUTO): it reads its table, the table follows the GPU measurements committed
in bench/results/, and attention on steps that want statistics runs the stats kernel."""

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from grokcopy.evals.targets import previous_token_targets
from grokcopy.model import backends
from grokcopy.model.backends import resolve

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
H100, H200 = RESULTS / "h100-80gb-hbm3-2026-11-25", RESULTS / "h200-2026-11-26"


def test_auto_reads_the_table(monkeypatch):
    assert resolve("attention", "auto", "cuda") == "sdpa/triton"
    assert resolve("attention", "auto", "cuda", dropout=True) == "sdpa"  # the Triton attention has no dropout
    assert resolve("norm", "auto", "cuda") == "triton" and resolve("mlp", "auto", "cuda") == "triton"
    monkeypatch.setitem(backends.AUTO, "attention", ("triton", "flash_attn", "a measurement"))
    monkeypatch.setitem(backends.AUTO, "mlp", ("torch", "torch", "another"))
    assert resolve("attention", "auto", "cuda") == "triton"
    assert resolve("mlp", "auto", "cuda") == "torch"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as inside a traced forward
    assert resolve("norm", "auto", "cuda") == "torch"
    # flash_attn is not installed here: the winner that cannot run falls back to the peer that can
    expected = "flash_attn" if backends.available("attention", "flash_attn") else "sdpa"
    assert resolve("attention", "auto", "cuda") == expected


def test_auto_on_the_cpu_is_unchanged():
    """The CPU's default runs train on these (the science grid on `tiny` depends on it)."""
    assert [resolve(op, "auto", "cpu") for op in ("attention", "norm", "mlp")] == ["sdpa", "torch", "torch"]


def _benchmarks(paths):
    return [b for p in paths if p.stat().st_size for b in json.loads(p.read_text())["benchmarks"]]


def test_the_attention_entry_is_the_measured_winner():
    """SDPA (cuDNN) against the Triton attention, forward+backward, at every shape the H100 measured."""
    speed = defaultdict(dict)
    for b in _benchmarks(sorted(H100.rglob("attention.json"))):
        p = b["params"]
        if p.get("pass_") == "fwd_bwd":
            speed[(p["T"], p["D"])][p["provider"]] = b["extra_info"]["do_bench_median_ms"]
    ratios = {shape: by["triton"] / by["sdpa_cudnn"] for shape, by in speed.items()
              if {"triton", "sdpa_cudnn"} <= set(by)}
    assert len(ratios) >= 4 and min(ratios.values()) > 1.2, ratios  # SDPA wins everywhere, by 1.27x or more
    assert backends.AUTO["attention"][0].split("/")[0] == "sdpa" == backends.AUTO["attention"][1].split("/")[0]


@pytest.mark.parametrize("results", [H100, H200], ids=["h100", "h200"])
def test_the_norm_and_mlp_entries_are_the_measured_winners(results):
    """At paper-162m's row width, forward+backward: eager, Triton beats torch for both ops; compiled,
    Inductor's norm beats the Triton norm and the Triton SwiGLU still beats Inductor's."""
    gbps = defaultdict(dict)
    for b in _benchmarks(sorted(results.rglob("kernels.json"))):
        p = b["params"]
        if p.get("pass_") == "fwd_bwd" and p["shape"][-1] in (768, 3072) and p["shape"][0] == 65536:
            gbps[p["op"]][p["provider"]] = b["extra_info"]["gbps"]
    op_of = {"rms_norm": "norm", "fused_add_rms_norm": "norm", "swiglu_packed": "mlp"}
    for kernel, op in op_of.items():
        by = gbps[kernel]
        eager = "triton" if by["triton"] > by["torch"] else "torch"
        compiled = "triton" if by["triton"] > by["compile"] else "torch"
        assert backends.AUTO[op][:2] == (eager, compiled), (kernel, by)


def test_the_compiled_norm_choice_matches_the_train_matrix():
    rows = {r["combo"]: r for r in json.loads((H100 / "call1" / "train_matrix.json").read_text())["results"]}
    compiled = {c: r["tokens_per_s"] for c, r in rows.items() if c.endswith("+compile") and "error" not in r}
    if "sdpa-torch-torch+compile" not in compiled:  # call1's matrix stopped early: the summary's rows
        text = (H100 / "summary.md").read_text()
        assert "| sdpa-torch-torch+compile | 319,781 |" in text and "| sdpa-triton-triton+compile | 299,960 |" in text
    else:
        assert compiled["sdpa-torch-torch+compile"] > compiled["sdpa-triton-triton+compile"]
    assert backends.AUTO["norm"][1] == "torch"


def test_auto_attention_runs_the_stats_kernel_only_when_statistics_are_wanted():
    torch.manual_seed(0)
    B, H, T, D = 1, 2, 32, 16
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    targets = previous_token_targets(B, T, device=q.device)
    out, stats = backends.attention(q, k, v, backend="sdpa/triton", targets=targets)
    ref_out, ref_stats = backends.attention(q, k, v, backend="triton", targets=targets)
    assert torch.equal(out, ref_out) and torch.equal(stats.target_mass, ref_stats.target_mass)
    out, stats = backends.attention(q, k, v, backend="sdpa/triton")
    assert stats is None and torch.equal(out, backends.attention(q, k, v, backend="sdpa")[0])
