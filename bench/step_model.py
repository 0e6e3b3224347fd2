"""A roofline account of one training step: per op, the bytes it must move and the FLOPs it must do,
the time they imply on a device, the sum, tokens/s and MFU -- and what each change of issue 33 should
gain, before a GPU measures it.

    python -m bench.step_model --preset paper-162m                 # H100, the preset's batch
    python -m bench.step_model --preset paper-162m --device h200 --batch 32 --json out.json

The step is the one grokcopy trains: bf16 autocast with an fp32 residual stream and fp32 parameters
(model/llama.py), fused AdamW with gradient clipping (train.py). Every op's floor is max(FLOPs / rate,
bytes / bandwidth): GEMMs at an achievable dense bf16 rate (650 TFLOP/s on Hopper, the issue's figure;
an 8192^3 matmul measured 798 on the H100), attention at the rate SDPA's cuDNN kernel measured for
T 1024, D 64 (bench/results), everything else at the copy bandwidth measured there (a device-to-device
copy, bytes read + written). Bytes are the fewest a fused kernel moves: each input read once, each
output written once, activations saved for backward read again there.

"today" is an estimate of the step as it runs now, from the same counts: four ops cost more than
their floor, and each is a change of issue 33 --
  cross-entropy  logits.float() then log-softmax and NLL: 36 bytes per logit against 6 for a chunked
                 fused linear + cross-entropy (Liger-style: bf16 chunk written once, its gradient
                 computed in place)
  rope           apply_rope's eager chain (neg, cat, two muls, an add; the same backward): 5x the
                 bytes of one rotary pass over q and k
  norms          the Triton RMSNorm at the fraction of copy bandwidth bench/test_kernels.py measured
                 (forward+backward, 65536 x 768), against 100% at the floor
  host syncs     train.py read the loss, gradient norm and flags every step: 302k tokens/s in
                 bench/train_matrix.py against 286k in train.py on the same backends (H100), 6.1 ms
                 per step, taken as a constant for every preset and device (--host-sync-ms)
Nothing here is a measurement of the step; the tokens/s it prints are what the counts imply.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from grokcopy.model import PRESETS, LlamaConfig

RESULTS = Path(__file__).resolve().parent / "results"
BF16, FP32 = 2, 4


@dataclass
class Device:
    name: str
    peak_tflops: float  # dense bf16 datasheet peak: MFU's denominator
    gemm_tflops: float  # achievable dense bf16 GEMM rate at these shapes (assumed)
    vector_tflops: float  # fp32 without the tensor cores (datasheet): elementwise ops' FLOPs
    hbm_tbps: float  # datasheet
    copy_tbps: float  # measured device-to-device copy (read + written), or the datasheet's x 0.9
    attention_tflops: dict  # {"fwd": ..., "bwd": ...} measured at T 1024, D 64, causal
    sources: list[str]


def _benchmarks(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.rglob("*.json")):
        try:
            out += json.loads(path.read_text()).get("benchmarks", []) if path.stat().st_size else []
        except (json.JSONDecodeError, AttributeError):
            continue
    return out


def measured(folder: Path) -> tuple[float | None, dict, dict]:
    """(copy bandwidth TB/s, attention TFLOP/s {(provider, pass): ...} at T1024-D64-causal,
    the Triton norms' fraction of copy bandwidth forward+backward at 65536 x 768) in a results folder."""
    copy, attention, norms = [], {}, {}
    for b in _benchmarks(folder):
        p, info = b.get("params", {}), b.get("extra_info", {})
        if "copy_bandwidth_gbps" in info:
            copy.append(info["copy_bandwidth_gbps"])
        if (p.get("T"), p.get("D"), p.get("causal")) == (1024, 64, True) and "provider" in p and "tflops" in info:
            attention[(p["provider"], p["pass_"])] = info["tflops"]
        if p.get("provider") == "triton" and p.get("pass_") == "fwd_bwd" and p.get("shape") == [65536, 768]:
            norms[p["op"]] = info["fraction_of_copy_bandwidth"]
    return (statistics.median(copy) / 1000 if copy else None), attention, norms


H100_RESULTS = RESULTS / "h100-80gb-hbm3-2026-11-25"
H200_RESULTS = RESULTS / "h200-2026-11-26"
# What a GPU measured for the step itself, to set the estimate beside: (preset, device, batch, seq_len)
MEASURED_STEP = {("paper-162m", "H100", 32, 1024): "the H100 measured 286k in train.py, 302k in bench/train_matrix.py "
                                                   "(sdpa-triton-triton, eager; h100-80gb-hbm3-2026-11-25)"}


def device(name: str) -> tuple[Device, dict]:
    """The device's ceilings, measured ones read from bench/results, and the Triton norms' measured
    fraction of copy bandwidth ({op: fraction}) for the `today` estimate."""
    hbm, folder = {"h100": (3.35, H100_RESULTS), "h200": (4.8, H200_RESULTS)}[name]
    copy, attention, norms = measured(folder)
    sources = [str(folder.relative_to(RESULTS.parent.parent))] if copy else []
    if not attention:  # the H200 call measured no attention peers: same SMs and clocks as the H100
        attention = measured(H100_RESULTS)[1]
        sources.append(f"attention rates from {H100_RESULTS.relative_to(RESULTS.parent.parent)}")
    rates = {"fwd": attention.get(("sdpa_cudnn", "fwd"), 330.0), "bwd": attention.get(("sdpa_cudnn", "bwd"), 230.0)}
    dev = Device(name.upper(), 989.4, 650.0, 67.0, hbm, copy or 0.9 * hbm, rates, sources)
    return dev, norms


@dataclass
class Op:
    """One op of the step, summed over its instances (layers) and both passes."""

    name: str
    kind: str  # gemm | attention | memory | host
    flops: float
    bytes: float
    today_s: float | None = None  # the estimate as it runs now, where it differs from the floor
    change: str = ""  # the issue-33 change that takes it from today to the floor

    def floor_s(self, dev: Device) -> float:
        """max(FLOPs / the rate of the unit doing them, bytes / copy bandwidth); 0 for host time."""
        if self.kind == "host":
            return 0.0
        if self.kind == "attention":  # forward is 2/7 of the FLOPs (backward 2.5x), each at its measured rate
            compute = self.flops * (2 / 7) / (dev.attention_tflops["fwd"] * 1e12) + \
                self.flops * (5 / 7) / (dev.attention_tflops["bwd"] * 1e12)
        else:
            compute = self.flops / ((dev.gemm_tflops if self.kind == "gemm" else dev.vector_tflops) * 1e12)
        return max(compute, self.bytes / (dev.copy_tbps * 1e12))


def parameter_count(cfg: LlamaConfig) -> int:
    """Llama(cfg).num_parameters(), from the shape (biases included when attention_bias)."""
    hd, q, kv = cfg.head_dim, cfg.n_heads, cfg.kv_heads
    qkv = cfg.d_model * (q + 2 * kv) * hd + ((q + 2 * kv) * hd if cfg.attention_bias else 0)
    wo = q * hd * cfg.d_model + (cfg.d_model if cfg.attention_bias else 0)
    block = qkv + wo + 3 * cfg.d_model * cfg.d_mlp + 2 * cfg.d_model
    embeddings = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return cfg.n_layers * block + cfg.d_model + embeddings


def flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    """MFU's count, as nanoGPT and torchtitan: 6 N (N without the input embedding, a lookup) plus
    12 L H Q T for attention (Q the head dim; full, not causal, attention, as they count it)."""
    n = parameter_count(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


def step_ops(cfg: LlamaConfig, batch: int, seq_len: int, norm_fraction: dict, copy_tbps: float,
             host_sync_s: float) -> list[Op]:
    """Every op of one training step of `cfg` on batch x seq_len tokens, forward and backward."""
    M, d, f, V, L = batch * seq_len, cfg.d_model, cfg.d_mlp, cfg.vocab_size, cfg.n_layers
    hd, q, kv = cfg.head_dim, cfg.n_heads, cfg.kv_heads
    qkv_out = (q + 2 * kv) * hd
    bw = copy_tbps * 1e12

    def gemm(name, k, n, count=L):  # [M, k] @ [k, n]: forward 2Mkn, backward dX and dW 4Mkn; bf16 operands
        fwd_bytes = (M * k + k * n + M * n) * BF16
        return Op(name, "gemm", count * 6 * M * k * n, count * 3 * fwd_bytes)

    def norm_op(name, per_token, op_key, count):
        bytes_ = count * M * per_token
        frac = norm_fraction.get(op_key)
        return Op(name, "memory", 0.0, bytes_, bytes_ / (frac * bw) if frac else None,
                  "norms at the copy limit" if frac else "")

    n_rope = sum(cfg.uses_rope(i) for i in range(L))
    rope_floor = n_rope * M * (q + kv) * hd * BF16 * 2 * 2  # q and k read and written, forward and backward
    causal_fwd = 2 * batch * q * seq_len * seq_len * hd  # 4 B H T^2 D, halved for the causal mask
    ce_today, ce_fused = 36 * M * V, 6 * M * V
    n_matrix = parameter_count(cfg) - (2 * L + 1) * d - (0 if cfg.tie_embeddings else V * d)  # lm_head counted
    n_params = parameter_count(cfg)
    ops = [
        # idx read, rows gathered and written fp32; backward: the gradient read and scatter-added
        # (read + write) into a zeroed fp32 table
        Op("embedding", "memory", 0.0, M * (8 + 2 * d * FP32) + M * 3 * d * FP32 + V * d * FP32),
        # fp32 stream in, bf16 out (+ rstd); backward: x and dy in, dx out
        norm_op("attn_norm (RMSNorm) x L", d * (FP32 + BF16) + d * (FP32 + BF16 + FP32), "rms_norm", L),
        gemm("qkv GEMM x L", d, qkv_out),
        Op("rope (q, k) x RoPE layers", "memory", 6 * n_rope * M * (q + kv) * hd, rope_floor, 5 * rope_floor / bw,
           "fused rope"),
        Op("attention fwd+bwd x L (causal)", "attention", L * 3.5 * causal_fwd,
           L * M * (q + 2 * kv) * hd * BF16 * 3 + L * M * q * hd * BF16 * 3),
        gemm("o GEMM x L", q * hd, d),
        # fused add + norm: bf16 branch + fp32 stream in, fp32 sum + bf16 normed out; backward 16 B/elem
        norm_op("residual add + mlp_norm x L", d * 12 + d * 16, "fused_add_rms_norm", L),
        gemm("gate_up GEMM x L", d, 2 * f),
        Op("swiglu fwd+bwd x L", "memory", L * M * f * 12, L * M * f * BF16 * (3 + 5)),
        gemm("down GEMM x L", f, d),
        # x + mlp(h) forward (fp32 + bf16 in, fp32 out); backward: attn_norm's dx summed into the
        # stream's gradient (two fp32 in, one out) and the MLP branch's gradient cast to bf16
        Op("residual adds x L", "memory", 0.0, L * M * d * (10 + 12 + 6)),
        norm_op("final norm", d * (FP32 + BF16) + d * (FP32 + BF16 + FP32), "rms_norm", 1),
        gemm("lm-head GEMM", d, V, count=1),
        Op("cross-entropy (fused; today fp32 logits)", "memory", 10 * M * V, ce_fused, ce_today / bw,
           "fused linear + cross-entropy"),
        # autocast's fp32 -> bf16 weight casts forward, bf16 -> fp32 weight gradients backward
        Op("autocast weight casts", "memory", 0.0, n_matrix * (FP32 + BF16) * 2),
        # clip: read the gradients for the norm, then scale them; fused AdamW: p, g, m, v in, p, m, v out
        Op("grad clip + AdamW (fused)", "memory", 16 * n_params, n_params * FP32 * (1 + 2 + 7)),
        Op("host syncs", "host", 0.0, 0.0, host_sync_s, "no host sync"),
    ]
    return ops


@dataclass
class Account:
    device: Device
    preset: str
    batch: int
    seq_len: int
    tokens: int
    flops_per_token: float
    rows: list[dict]
    floor_s: float
    today_s: float
    changes: dict  # change -> {"saves_ms", "tokens_per_s", "mfu"} applied alone to today


def account(preset: str, device_name: str = "h100", batch: int | None = None, seq_len: int | None = None,
            host_sync_s: float = 6.1e-3) -> Account:
    cfg = PRESETS[preset].model
    train = PRESETS[preset].train
    batch, seq_len = batch or train.get("batch_size", 8), seq_len or train.get("seq_len", 256)
    dev, norms = device(device_name)
    ops = step_ops(cfg, batch, seq_len, norms, dev.copy_tbps, host_sync_s)
    tokens, fpt = batch * seq_len, flops_per_token(cfg, seq_len)
    rows = []
    for op in ops:
        floor = op.floor_s(dev)
        rows.append({"op": op.name, "kind": op.kind, "gflop": op.flops / 1e9, "gb": op.bytes / 1e9,
                     "floor_ms": floor * 1e3, "today_ms": (op.today_s if op.today_s is not None else floor) * 1e3,
                     "change": op.change})
    floor_s, today_s = sum(r["floor_ms"] for r in rows) / 1e3, sum(r["today_ms"] for r in rows) / 1e3

    def speed(seconds):
        return {"tokens_per_s": tokens / seconds, "mfu": tokens / seconds * fpt / (dev.peak_tflops * 1e12)}

    changes = {}
    for change in dict.fromkeys(r["change"] for r in rows if r["change"]):
        saved = sum(r["today_ms"] - r["floor_ms"] for r in rows if r["change"] == change) / 1e3
        changes[change] = {"saves_ms": saved * 1e3, **speed(today_s - saved)}
    changes["all four"] = {"saves_ms": (today_s - floor_s) * 1e3, **speed(floor_s)}
    return Account(dev, preset, batch, seq_len, tokens, fpt, rows, floor_s, today_s, changes)


def render(a: Account) -> str:
    d = a.device
    lines = [f"{a.preset} on {d.name}: batch {a.batch} x {a.seq_len} = {a.tokens:,} tokens per step, bf16 autocast",
             f"ceilings: copy {d.copy_tbps:.2f} TB/s ({'measured' if d.sources else 'assumed'}; HBM datasheet "
             f"{d.hbm_tbps}), GEMM {d.gemm_tflops:.0f} TFLOP/s (assumed achievable; peak {d.peak_tflops}), "
             f"attention {d.attention_tflops['fwd']:.0f} fwd / {d.attention_tflops['bwd']:.0f} bwd TFLOP/s "
             f"(SDPA cuDNN, T1024-D64, measured)", *(f"  from {s}" for s in d.sources), "",
             f"{'op':<42} {'GFLOP':>8} {'GB':>7} {'floor ms':>9} {'today ms':>9}  change",
             "-" * 100]
    for r in a.rows:
        today = f"{r['today_ms']:9.2f}" if r["today_ms"] != r["floor_ms"] else f"{'':>9}"
        lines.append(f"{r['op']:<42} {r['gflop']:8.0f} {r['gb']:7.2f} {r['floor_ms']:9.2f} {today}  {r['change']}")
    fl_tok, to_tok = a.tokens / a.floor_s, a.tokens / a.today_s
    mfu = lambda tok_s: tok_s * a.flops_per_token / (d.peak_tflops * 1e12)  # noqa: E731
    lines += ["-" * 100,
              f"{'sum':<42} {sum(r['gflop'] for r in a.rows):8.0f} {sum(r['gb'] for r in a.rows):7.2f} "
              f"{a.floor_s * 1e3:9.2f} {a.today_s * 1e3:9.2f}",
              "",
              f"MFU counts {a.flops_per_token / 1e6:.1f} MFLOP per token (6N + 12 L H Q T) against {d.peak_tflops} "
              "TFLOP/s",
              f"floor:  {fl_tok:>9,.0f} tokens/s, MFU {mfu(fl_tok):.3f}",
              f"today:  {to_tok:>9,.0f} tokens/s, MFU {mfu(to_tok):.3f}  (estimate; "
              f"{MEASURED_STEP.get((a.preset, d.name, a.batch, a.seq_len), 'no GPU measured this step')})",
              "", "expected gain of each change of issue 33, alone on top of today:"]
    for change, g in a.changes.items():
        lines.append(f"  {change:<30} -{g['saves_ms']:6.2f} ms  -> {g['tokens_per_s']:>9,.0f} tokens/s "
                     f"({g['tokens_per_s'] / to_tok:.2f}x), MFU {g['mfu']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.step_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper-162m", choices=sorted(PRESETS))
    parser.add_argument("--device", default="h100", choices=["h100", "h200"])
    parser.add_argument("--batch", type=int, default=0, help="sequences per step (default: the preset's)")
    parser.add_argument("--seq-len", type=int, default=0, help="default: the preset's")
    parser.add_argument("--host-sync-ms", type=float, default=6.1, help="today's cost of the per-step host syncs")
    parser.add_argument("--json", help="also write the account here")
    args = parser.parse_args(argv)
    a = account(args.preset, args.device, args.batch or None, args.seq_len or None, args.host_sync_ms / 1e3)
    print(render(a))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(a), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
